"""The comparative report rendered from the committed run folders (results/) and opened in headless
Chromium: every report page renders, every image on it loads (complete, naturalWidth > 0), and no
page is wider than the window (a wide table scrolls inside its container instead).

One Chromium start for all pages: a harness page frames every report page and, once each frame has
loaded (images included), writes what it saw into the DOM that `--dump-dom` prints."""
import html, json, re, shutil, subprocess

import nbformat
import pytest

from conftest import ROOT
from stackwise import runs
from stackwise.report import site

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
HARNESS = """<!doctype html><html><head><meta charset="utf-8"></head><body><pre id="stackwise-probe">pending</pre><script>
const pages = %s, seen = {};
let left = pages.length;
for (const p of pages) {
  const f = document.createElement('iframe');
  f.style.width = '1280px'; f.style.height = '900px';
  f.onload = () => {
    try {
      const d = f.contentDocument, imgs = [...d.images];
      seen[p] = {images: imgs.length, bad: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute('src') || '').slice(0, 80)),
                 h1: d.querySelectorAll('h1').length, text: d.body.innerText.length, errors: d.querySelectorAll('.output_error').length,
                 overflow: d.documentElement.scrollWidth - d.documentElement.clientWidth,
                 scrolling: [...d.querySelectorAll('.table-wrap')].filter(w => w.scrollWidth > w.clientWidth).length};
    } catch (e) { seen[p] = {probe_error: String(e)}; }
    if (--left === 0) document.getElementById('stackwise-probe').textContent = JSON.stringify(seen);
  };
  f.src = p; document.body.appendChild(f);
}
</script></body></html>"""


@pytest.fixture(scope='module')
def report_site(tmp_path_factory):
    "The report pages alone, executed against the committed results/ and rendered by the static fallback."
    spec = site.site_spec(ROOT)
    pages = [p for p in spec['pages'] if p.startswith('report/')]
    tmp = tmp_path_factory.mktemp('report')
    staged = site.stage_site(ROOT, tmp/'_proc', results=ROOT/'results', pages=pages, progress=False)
    only = dict(spec, pages=pages, sections=[(s, [p for p in ps if p in pages]) for s, ps in spec['sections'] if set(ps) & set(pages)])
    site.render_fallback(staged, tmp/'_site', only, progress=False)
    return tmp/'_site', pages


def probe_all(out, tmp_path) -> dict:
    "What headless Chromium saw on every page under `out/report`, by page stem."
    pages = sorted(p.relative_to(out).as_posix() for p in (out/'report').glob('*.html'))
    harness = out/'_probe.html'
    harness.write_text(HARNESS % json.dumps(pages), encoding='utf-8')
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                        '--disable-component-update', '--disable-sync', '--allow-file-access-from-files', f'--user-data-dir={tmp_path/"profile"}',
                        '--virtual-time-budget=20000', '--dump-dom', harness.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="stackwise-probe">(.*?)</pre>', r.stdout, re.S)
    assert m and m[1] != 'pending', f'Chromium did not finish probing the pages (exit {r.returncode}): {r.stderr[-1500:]}'
    return {p.split('/')[-1].removesuffix('.html'): v for p, v in json.loads(html.unescape(m[1])).items()}


@pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH (Debian: apt-get install chromium): the browser check cannot run")
def test_report_pages_render_and_images_load(report_site, tmp_path):
    out, pages = report_site
    seen = probe_all(out, tmp_path)
    assert len(seen) == len(pages), (sorted(seen), pages)
    for stem, p in seen.items():
        assert 'probe_error' not in p, f'report/{stem}.html: {p}'
        assert p['bad'] == [], f'report/{stem}.html: images that did not load: {p["bad"]}'
        assert p['h1'] >= 1 and p['text'] > 300 and p['errors'] == 0, f'report/{stem}.html: {p}'
        assert p['overflow'] <= 0, f'report/{stem}.html is {p["overflow"]} px wider than the window'
    # the studies with committed run folders show their figures
    for stem, exp, column, least in (('scaling', 'scaling', 'run_id', 2), ('depth_study', 'depth_time', 'metrics.headline.plan', 2),
                                     ('overview', 'scaling', 'run_id', 1), ('findings', 'nanogpt_char', 'metrics.val_loss.mean', 1)):
        done = runs.load_runs(exp, ROOT/'results')
        if column in done and done[column].notna().any():
            assert seen[stem]['images'] >= least, f'report/{stem}.html shows {seen[stem]["images"]} images'


def test_probe_sees_a_broken_image(tmp_path):
    "The probe itself can fail: a page with a missing image is reported as such."
    if not CHROMIUM: pytest.skip('no chromium on PATH (Debian: apt-get install chromium): the browser check cannot run')
    (tmp_path/'site'/'report').mkdir(parents=True)
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='
    (tmp_path/'site'/'report'/'p.html').write_text(f'<html><body><h1>t</h1><img src="data:image/png;base64,{png}"><img src="missing.png"></body></html>')
    seen = probe_all(tmp_path/'site', tmp_path)
    assert seen['p']['images'] == 2 and seen['p']['bad'] == ['missing.png'], seen


def test_wide_table_scrolls_inside_the_page(tmp_path):
    "A table wider than the window scrolls inside its container and the page stays as wide as the window; the same page without the container runs past it."
    if not CHROMIUM: pytest.skip('no chromium on PATH (Debian: apt-get install chromium): the browser check cannot run')
    staged = tmp_path/'proc'
    (staged/'report').mkdir(parents=True)
    table = '<table><tr>' + ''.join(f'<td>column_{i}_holds_a_long_unbreakable_value</td>' for i in range(30)) + '</tr></table>'
    cell = nbformat.v4.new_code_cell('#| echo: false\nwide_table', outputs=[nbformat.v4.new_output('display_data', data={'text/html': table})])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell('---\ntitle: Wide\n---'), cell]), staged/'report'/'wide.ipynb')
    site.render_fallback(staged, tmp_path/'site', dict(title='t', sections=[('Report', ['report/wide.ipynb'])], pages=['report/wide.ipynb']), progress=False)
    page = (tmp_path/'site'/'report'/'wide.html').read_text()
    (tmp_path/'site'/'report'/'bare.html').write_text(page.replace('<div class="table-wrap">', '<div>'))
    seen = probe_all(tmp_path/'site', tmp_path)
    assert seen['wide']['overflow'] <= 0 and seen['wide']['scrolling'] == 1, seen
    assert seen['bare']['overflow'] > 0, seen
