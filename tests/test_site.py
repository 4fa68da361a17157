"""The rendered site: every page present, every local link and image resolving, the report drawn
from results/, and (when Debian's chromium is installed) a real browser rendering it."""
import base64, io, os, re, shutil, subprocess, tempfile
from pathlib import Path

import pytest

from conftest import ROOT, exe, run_cmd
from stackwise.report import experiments, site
from stackwise import runs


@pytest.fixture(scope='module')
def rendered(hardware_results, tmp_path_factory):
    out = tmp_path_factory.mktemp('site')/'_site'
    r = run_cmd([exe('stackwise'), 'docs', '--no-quarto', '--out', str(out), '--results', str(hardware_results)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith(f'site: {out/"index.html"}')
    return out


def test_every_page_rendered(rendered):
    spec = site.site_spec(ROOT)
    pages = sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob('*.html'))
    assert len(pages) == len(spec['pages']) and 'index.html' in pages
    assert {'report/runs.html', 'report/hardware.html', 'hardware.html', 'experiments/hardware.html'} <= set(pages)


def test_links_and_images_resolve(rendered):
    assert site.check_site(rendered) == []


def test_sidebar_lists_chapters_and_report(rendered):
    index = (rendered/'index.html').read_text()
    for title in ('Run folders', 'Hardware and peak FLOP/s', 'The command line', 'The site', 'All runs', 'Hardware probe'):
        assert f'>{title}</a>' in index
    assert site.FALLBACK_NOTE in index


def test_every_experiment_is_on_the_site():
    assert set(f'experiments/{e}.ipynb' for e in experiments.list_experiments(ROOT)) <= set(site.site_spec(ROOT)['pages'])


def test_report_reads_results(rendered, hardware_results):
    (run,) = runs.list_runs('hardware', hardware_results)
    assert run.name in (rendered/'report'/'runs.html').read_text()
    html = (rendered/'report'/'hardware.html').read_text()
    assert run.name in html
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert pngs, 'the hardware chart is on the report page'
    import matplotlib.image
    img = matplotlib.image.imread(io.BytesIO(base64.b64decode(pngs[0])), format='png')
    assert img.shape[0] > 200 and img.shape[1] > 300


def test_findings_lead_the_report(rendered):
    "The report opens with the findings page; with none of the studies' runs in results/, each question says it is not yet measured, with its command."
    from stackwise.report.findings import QUESTIONS
    report = dict(site.site_spec(ROOT)['sections'])['Report']
    assert report[0] == 'report/00_findings.ipynb', report
    nav = re.search(r'<h3>Report</h3><ul><li[^>]*><a href="([^"]+)">([^<]+)</a>', (rendered/'index.html').read_text())
    assert nav and nav.groups() == ('report/findings.html', 'Findings'), nav and nav.groups()
    html = (rendered/'report'/'findings.html').read_text()
    assert '<h1 class="title">Findings</h1>' in html
    assert html.count('Not yet measured: <code>stackwise experiment ') == len(QUESTIONS), html[-3000:]


def test_tables_sit_in_scrolling_containers(rendered):
    "Every table of every page is wrapped in a container that scrolls sideways (the browser test measures it)."
    css = (rendered/'site.css').read_text()
    assert '.table-wrap{max-width:100%;overflow-x:auto' in css
    tables = 0
    for page in rendered.rglob('*.html'):
        html = page.read_text()
        assert html.count('<table') == html.count('<div class="table-wrap"><table'), page
        tables += html.count('<table')
    assert tables > 0, 'some page has a table (the runs page does)'


def test_refuses_to_wipe_a_foreign_folder(tmp_path):
    (tmp_path/'precious.txt').write_text('keep me')
    r = run_cmd([exe('stackwise'), 'docs', '--no-quarto', '--out', str(tmp_path)])
    assert r.returncode == 1 and 'was not made by stackwise' in r.stderr
    assert (tmp_path/'precious.txt').read_text() == 'keep me'


CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize('page', ['index.html', 'report/hardware.html'])
def test_chromium_screenshot(rendered, page, tmp_path):
    png = tmp_path/'shot.png'
    subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                    '--disable-background-networking', '--disable-component-update', '--disable-sync',
                    f'--user-data-dir={tmp_path/"profile"}', '--window-size=1280,1000', f'--screenshot={png}',
                    (rendered/page).as_uri()], capture_output=True, timeout=120)
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (1000, 1280)
    assert img[..., :3].std() > 0.05, 'the page rendered content, not a blank screen'
    if os.environ.get('STACKWISE_SCREENSHOTS'):
        shutil.copy(png, Path(os.environ['STACKWISE_SCREENSHOTS'])/page.replace('/', '_').replace('.html', '.png'))
