import os
import subprocess
import sys

import pytest

from helpers import REPO, load_script, run_in_process, run_script
from configurator import ConfigError, config_from_globals, parse_config

DEFAULTS = {'batch_size': 12, 'learning_rate': 6e-4, 'compile': None, 'out_dir': 'out', 'start': '\n',
            'decay_lr': True, 'wandb_run_name': 'gpt2', 'top_k': 200}
TYPES = {'compile': bool}


def parse(*argv):
    return parse_config(DEFAULTS, list(argv), TYPES)


def test_defaults_untouched():
    assert parse() == DEFAULTS


def test_literals():
    c = parse('--batch_size=32', '--learning_rate=1e-3', '--decay_lr=False', '--compile=True')
    assert c['batch_size'] == 32 and c['learning_rate'] == 1e-3 and c['decay_lr'] is False
    assert c['compile'] is True


def test_none_allowed_where_declared():
    assert parse('--compile=None')['compile'] is None


def test_bare_strings():
    assert parse('--out_dir=out-shakespeare')['out_dir'] == 'out-shakespeare'
    assert parse('--start=Once upon a time')['start'] == 'Once upon a time'
    assert parse("--start='quoted'")['start'] == 'quoted'
    # a string setting keeps what was typed, even when it reads as a number
    assert parse('--start=42')['start'] == '42'


def test_value_containing_equals():
    assert parse('--start=a=b=c')['start'] == 'a=b=c'
    assert parse('--start=FILE:x=1.txt')['start'] == 'FILE:x=1.txt'


def test_int_for_float_is_accepted():
    c = parse('--learning_rate=1')
    assert c['learning_rate'] == 1.0 and isinstance(c['learning_rate'], float)


@pytest.mark.parametrize('arg, message', [
    ('--batch_size=abc', "batch_size='abc' has type str; expected int"),
    ('--batch_size=1.5', "batch_size=1.5 has type float; expected int"),
    ('--batch_size=True', "batch_size=True has type bool; expected int"),
    ('--decay_lr=1', "decay_lr=1 has type int; expected bool"),
    ('--compile=yes', "compile='yes' has type str; expected bool"),
])
def test_wrong_type(arg, message):
    with pytest.raises(ConfigError) as e:
        parse(arg)
    assert message in str(e.value)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        parse('--lerning_rate=1e-3')
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'$"):
        parse('--zzz=1')


def test_argument_without_value():
    with pytest.raises(ConfigError, match='has no value'):
        parse('--batch_size')


def test_config_file_overrides_in_order(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("import math\n# a comment\nbatch_size = 4 * 8\nout_dir = 'out-' + str(batch_size)\n"
                    "learning_rate = 1\n_scratch = 3\n")
    c = parse(str(path))
    assert c['batch_size'] == 32 and c['out_dir'] == 'out-32' and c['learning_rate'] == 1.0
    # later arguments win
    assert parse(str(path), '--batch_size=2')['batch_size'] == 2
    assert parse('--batch_size=2', str(path))['batch_size'] == 32


def test_config_file_sees_earlier_values(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("batch_size = batch_size * 2\n")
    assert parse('--batch_size=5', str(path))['batch_size'] == 10


def test_config_file_typo_is_an_error(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("batch_sise = 4\n")
    with pytest.raises(ConfigError, match=r"cfg.py: unknown config key 'batch_sise' \(did you mean 'batch_size'\?\)"):
        parse(str(path))


def test_config_file_wrong_type(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("batch_size = '4'\n")
    with pytest.raises(ConfigError, match="batch_size='4' has type str; expected int"):
        parse(str(path))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'config/nope.py' not found"):
        parse('config/nope.py')


def test_config_file_syntax_error(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("batch_size = = 4\n")
    with pytest.raises(ConfigError, match='line 1'):
        parse(str(path))


def test_config_from_globals_takes_plain_values_only():
    namespace = {'a': 1, 'b': 'x', 'c': None, 'd': 1.5, 'e': True, '_private': 1, 'f': ['x'], 'g': print,
                 'h': {'k': 1}, 'HEADER_BYTES': 1024}
    assert config_from_globals(namespace) == {'a': 1, 'b': 'x', 'c': None, 'd': 1.5, 'e': True, 'f': ['x']}


def test_a_list_setting_given_several_times_collects_its_values(tmp_path):
    defaults = {'input': [], 'dataset': ''}
    assert parse_config(defaults, [])['input'] == []
    assert parse_config(defaults, ['--input=a.txt'])['input'] == ['a.txt']
    # each value as written: a comma, a number or brackets stay text
    c = parse_config(defaults, ['--input=a.txt', '--dataset=x', '--input=b,c.txt', '--input=42', '--input=[1]'])
    assert c['input'] == ['a.txt', 'b,c.txt', '42', '[1]'] and c['dataset'] == 'x'
    # a config file sets the whole list; the command line's values replace it
    path = tmp_path / 'cfg.py'
    path.write_text("input = ['docs', 'more.jsonl']\n")
    assert parse_config(defaults, [str(path)])['input'] == ['docs', 'more.jsonl']
    assert parse_config(defaults, [str(path), '--input=c.txt', '--input=d.txt'])['input'] == ['c.txt', 'd.txt']
    assert defaults['input'] == []  # the defaults are never changed in place
    path.write_text("input = ['a', 1]\n")
    with pytest.raises(ConfigError, match='must be a list of strings'):
        parse_config(defaults, [str(path)])
    path.write_text("input = 'a.txt'\n")
    with pytest.raises(ConfigError, match='has type str; expected list'):
        parse_config(defaults, [str(path)])


def test_shipped_config_files_are_valid():
    import glob
    import os

    import sample
    import train
    from conftest import REPO
    for path in sorted(glob.glob(os.path.join(REPO, 'config', '*.py'))):
        defaults = sample.DEFAULTS if os.path.basename(path).startswith('sample') else train.DEFAULTS
        parse_config(defaults, [path], train.TYPES)


# -----------------------------------------------------------------------------
# --help

SCRIPTS_WITH_SETTINGS = {'train.py': "--batch_size=12", 'sample.py': "--num_samples=10", 'bench.py': "--mode='train'",
                         'export_hf.py': "--dtype='float32'", 'hellaswag.py': "--max_examples=None",
                         'explain.py': "--top_k=10", 'plot.py': "--png=None"}
PREPARE_SCRIPTS = ['data/shakespeare_char/prepare.py', 'data/shakespeare/prepare.py',
                   'data/fineweb10B/prepare.py', 'data/openwebtext/prepare.py']


@pytest.mark.parametrize('script', sorted(SCRIPTS_WITH_SETTINGS))
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_lists_settings_with_defaults_and_comments_and_touches_nothing(script, flag, tmp_path):
    result = run_in_process(script, '--out_dir=elsewhere', flag, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert SCRIPTS_WITH_SETTINGS[script] in result.stdout
    assert 'config file' in result.stdout and '--key=value' in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_shows_each_settings_comment_from_the_source():
    result = run_in_process('train.py', '--help', cwd=REPO)
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith('--grad_clip='))
    assert line.split('#', 1)[1].strip() == 'clip gradients at this value, or disable if == 0.0'
    assert 'adamw optimizer' in result.stdout.splitlines()  # the block's own headings


@pytest.mark.parametrize('script', PREPARE_SCRIPTS)
def test_prepare_help_exits_before_touching_the_data(script, tmp_path, monkeypatch):
    module = load_script(script, 'prepare_help')
    monkeypatch.setattr(module, 'prepare', lambda *a, **k: pytest.fail('prepare ran'))
    with pytest.raises(SystemExit) as e:
        module.main(['--help'])
    assert e.value.code == 0


def test_prepare_text_help_lists_its_settings_and_touches_nothing(tmp_path, monkeypatch, capsys):
    module = load_script('data/prepare_text.py', 'prepare_text_help')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        module.main(['--input=missing.txt', '-h'])
    assert e.value.code == 0 and "--tokenizer='char'" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('script', ['sample.py', 'data/prepare_text.py'])
def test_help_into_a_closed_pipe_ends_quietly(script, tmp_path):
    # `python sample.py --help | head -3`: the reader is gone before the help is written
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script), '--help'], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and stderr == ''


def test_help_on_the_real_command_line(tmp_path):
    result = run_script('data/shakespeare_char/prepare.py', '-h', cwd=str(tmp_path))
    assert result.returncode == 0 and 'meta.pkl' in result.stdout
    assert list(tmp_path.iterdir()) == []
