"""README.md is generated from nbs/index.ipynb and tells the truth about the two commands."""
import re

from conftest import ROOT
from stackwise.report import site


def test_readme_in_step_with_home_page():
    site.write_readme(ROOT, check=True)


def test_quickstart_is_exactly_two_commands():
    text = (ROOT/'README.md').read_text()
    block = re.search(r'## Quickstart.*?```sh\n(.*?)```', text, re.S)[1]
    cmds = [l.split('#')[0].strip() for l in block.splitlines() if l.strip()]
    assert cmds == ['make report', 'make test']


def test_makefile_has_every_target_the_readme_names():
    text, make = (ROOT/'README.md').read_text(), (ROOT/'Makefile').read_text()
    for target in set(re.findall(r'\bmake ([\w-]+)', text)):
        assert re.search(rf'^{target}:', make, re.M), f'README names make {target}, the Makefile lacks it'


def test_ci_runs_the_readme_test_command_offline():
    ci = (ROOT/'.ci'/'run').read_text()
    assert 'make test' in ci and 'HF_HUB_OFFLINE=1' in ci and 'HF_DATASETS_OFFLINE=1' in ci


def test_developer_section_explains_nbdev3():
    text = (ROOT/'README.md').read_text()
    assert 'nbdev 3' in text and 'execnb 0.1.18' in text and 'fastcore 1.14.5' in text
    assert 'allowed_cell_metadata_keys' in text
