"""The comparative report rendered from the committed run folders (results/) and opened in headless
Chromium: every report page renders, and every image on it loads (naturalWidth > 0)."""
import html, json, re, shutil, subprocess

import pytest

from conftest import ROOT
from stackwise import runs, site

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# Appended to a copy of each page: after the load event, the page writes what it saw into the DOM that --dump-dom prints.
PROBE = """<script>addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute('src') || '').slice(0, 80));
  const p = document.createElement('pre'); p.id = 'stackwise-probe';
  p.textContent = JSON.stringify({images: imgs.length, bad: bad, h1: document.querySelectorAll('h1').length,
                                  text: document.body.innerText.length, errors: document.querySelectorAll('.output_error').length});
  document.body.appendChild(p); });</script>"""


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


def probe(page, tmp_path) -> dict:
    "What headless Chromium saw on `page` once it loaded."
    copy = page.with_name(f'_probe_{page.name}')
    copy.write_text(page.read_text(encoding='utf-8').replace('</body>', PROBE + '</body>'), encoding='utf-8')
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                        '--disable-component-update', '--disable-sync', f'--user-data-dir={tmp_path/"profile"}',
                        '--virtual-time-budget=5000', '--dump-dom', copy.as_uri()], capture_output=True, text=True, timeout=60)
    copy.unlink()
    m = re.search(r'<pre id="stackwise-probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f'{page.name}: Chromium printed no probe (exit {r.returncode}): {r.stderr[-1500:]}'
    return json.loads(html.unescape(m[1]))


@pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH (Debian: apt-get install chromium): the browser check cannot run")
def test_report_pages_render_and_images_load(report_site, tmp_path):
    out, pages = report_site
    seen = {}
    for page in sorted((out/'report').glob('*.html')):
        p = seen[page.stem] = probe(page, tmp_path)
        assert p['bad'] == [], f'{page.name}: images that did not load: {p["bad"]}'
        assert p['h1'] >= 1 and p['text'] > 300 and p['errors'] == 0, f'{page.name}: {p}'
    assert len(seen) == len(pages), (sorted(seen), pages)
    # the studies with committed run folders show their figures
    for stem, exp, column, least in (('scaling', 'scaling', 'run_id', 2), ('depth_study', 'depth_time', 'metrics.headline.plan', 2),
                                     ('overview', 'scaling', 'run_id', 1)):
        done = runs.load_runs(exp, ROOT/'results')
        if column in done and done[column].notna().any():
            assert seen[stem]['images'] >= least, f'report/{stem}.html shows {seen[stem]["images"]} images'
