"""
The newer features' bad inputs, a test for each class of them: each ends in one line that says what is wrong and
what to do, with a non-zero exit, and leaves every good file as it was.
"""
import json
import os
import pickle

import pytest
import torch

from checkpoint import save_checkpoint
from helpers import TINY, assert_one_line_error, checksums, run_in_process, run_script, shakespeare_text
from test_plot import run_records, write_log

def permissions_stop_this_process():
    """Whether a file without read permission cannot be read here (root, with its overrides, reads it anyway)."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'probe')
        open(path, 'w').close()
        os.chmod(path, 0)
        try:
            open(path).close()
            return False
        except PermissionError:
            return True


enforced_permissions = pytest.mark.skipif(not permissions_stop_this_process(),
                                          reason='this process (root) reads and writes files whatever their '
                                                 'permissions')




# -----------------------------------------------------------------------------
# --png: a figure never replaces a file that is not a PNG, and goes where a user expects

@pytest.mark.parametrize('png, fragment', [
    ('out/ckpt.pt', "--png='out/ckpt.pt' must name a .png file"),
    ('x.jpg', "--png='x.jpg' must name a .png file"),
    ('out/folder.png', "cannot write 'out/folder.png': it is a folder"),
    ('out/notes.png', "'out/notes.png' exists and is not a PNG; refusing to replace it"),
])
@pytest.mark.parametrize('script', ['explain.py', 'plot.py'])
def test_png_never_replaces_another_file(trained, script, png, fragment):
    pytest.importorskip('matplotlib')
    (trained / 'out' / 'folder.png').mkdir()
    (trained / 'out' / 'notes.png').write_text('my notes')
    before = checksums(trained)
    args = ['--what=attention', '--start=RO', '--device=cpu'] if script == 'explain.py' else ['out']
    r = run_in_process(script, *args, f'--png={png}', cwd=trained)
    assert_one_line_error(r, fragment)
    assert checksums(trained) == before


def test_explain_writes_a_bare_png_name_into_the_runs_folder(trained):
    pytest.importorskip('matplotlib')
    r = run_in_process('explain.py', '--what=attention', '--start=RO', '--device=cpu', '--png=att.png', cwd=trained)
    assert r.returncode == 0, r.stderr
    assert (trained / 'out' / 'att.png').exists() and not (trained / 'att.png').exists()
    assert f"wrote {os.path.join('out', 'att.png')}" in r.stdout


def test_a_png_that_cannot_be_written_is_one_line(trained, monkeypatch):
    pytest.importorskip('matplotlib')
    import matplotlib.figure

    def read_only(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', read_only)
    r = run_in_process('plot.py', 'out', cwd=trained)
    assert_one_line_error(r, f"cannot write '{os.path.join('out', 'loss.png')}' (Permission denied)")


# -----------------------------------------------------------------------------
# checkpoints that load but cannot be right

def poisoned_checkpoint(folder, **changes):
    path = folder / 'out' / 'ckpt.pt'
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(changes)
    save_checkpoint(ckpt, str(path))
    return path


@pytest.mark.parametrize('script, args', [('sample.py', ['--max_new_tokens=2', '--device=cpu']),
                                          ('export_hf.py', ['--hf_dir=hf']),
                                          ('explain.py', ['--what=next', '--start=RO', '--device=cpu'])])
def test_a_checkpoint_of_nan_weights_is_refused(trained, script, args):
    ckpt = torch.load(trained / 'out' / 'ckpt.pt', weights_only=True)
    ckpt['model']['transformer.h.1.mlp.c_fc.weight'][3, 5] = float('nan')
    save_checkpoint(ckpt, str(trained / 'out' / 'ckpt.pt'))
    r = run_in_process(script, '--out_dir=out', *args, cwd=trained)
    assert_one_line_error(r, "checkpoint 'out/ckpt.pt' holds non-finite weights (nan or inf, in "
                             "transformer.h.1.mlp.c_fc.weight): the run diverged before it was saved")
    assert not (trained / 'hf').exists()


@pytest.mark.parametrize('changes, fragment', [
    (dict(iter_num='2'), "checkpoint 'out/ckpt.pt' has iter_num='2', not a whole number"),
    (dict(lora={'rank': 4, 'alpha': 8.0, 'targets': ['c_attn']}),
     "the run in 'out' was trained with lora_rank=4 lora_alpha=8.0 lora_targets=c_attn"),
])
def test_a_checkpoint_with_a_bad_entry_is_not_resumed(trained, changes, fragment):
    poisoned_checkpoint(trained, **changes)
    before = checksums(trained)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume', cwd=trained)
    assert_one_line_error(r, fragment)
    assert checksums(trained) == before


def test_a_lora_entry_without_its_weights(trained):
    poisoned_checkpoint(trained, lora={'rank': 4, 'alpha': 8.0, 'targets': ['c_attn']})
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume', '--lora_rank=4',
                       '--lora_alpha=8.0', cwd=trained)
    assert_one_line_error(r, "the run in 'out' has a LoRA entry without its adapters' weights")
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=hf', cwd=trained)
    assert_one_line_error(r, "checkpoint 'out/ckpt.pt' has a LoRA entry without its adapters' weights")
    assert not (trained / 'hf').exists()


# -----------------------------------------------------------------------------
# a resumed run: its vocabulary, and a folder it cannot write

def char_dataset(root, name, text):
    r = run_script('data/prepare_text.py', f'--input={write(root / (name + ".txt"), text)}', f'--dataset={name}',
                   cwd=root)
    assert r.returncode == 0, r.stderr


def write(path, text):
    path.write_text(text, encoding='utf-8')
    return path


def test_change_dataset_onto_other_characters_is_refused(trained):
    char_dataset(trained, 'digits', '0123456789 ' * 2000)
    before = checksums(trained / 'out')
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume',
                       '--dataset=digits', '--change_dataset=True', cwd=trained)
    chars = pickle.loads((trained / 'data' / 'shakespeare_char' / 'meta.pkl').read_bytes())['vocab_size']
    assert_one_line_error(r, "data/digits has a vocabulary of 11 characters (' 0123456789'), but the run in 'out' "
                             f"was trained with a vocabulary of {chars} characters", "so its token ids would mean "
                             "other text to the model")
    assert checksums(trained / 'out') == before


def test_the_same_characters_go_on(trained):
    text = (trained / 'data' / 'shakespeare_char' / 'input.txt').read_text(encoding='utf-8')
    char_dataset(trained, 'again', text[::-1])  # other text, the same characters
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume',
                       '--dataset=again', '--change_dataset=True', cwd=trained)
    assert r.returncode == 0, r.stderr


def test_resume_into_a_folder_it_cannot_write_stops_at_the_start(trained):
    log = trained / 'out' / 'log.jsonl'
    records = log.read_bytes()
    log.unlink()
    log.mkdir()  # a log that cannot be appended to (as root, permissions would not stop the write)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume', cwd=trained)
    assert_one_line_error(r, f"cannot write '{os.path.join('out', 'log.jsonl')}' (Is a directory); fix its "
                             f"permissions, or choose another --out_dir")
    assert r.stdout == ''
    log.rmdir()
    log.write_bytes(records)


@enforced_permissions
def test_resume_into_a_read_only_folder_stops_at_the_start(trained):
    os.chmod(trained / 'out', 0o555)
    try:
        r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=4', '--init_from=resume', cwd=trained)
    finally:
        os.chmod(trained / 'out', 0o755)
    assert_one_line_error(r, "cannot write to out_dir 'out' (Permission denied); fix its permissions")


# -----------------------------------------------------------------------------
# settings that pass their types but cannot work

@pytest.mark.parametrize('script, args, fragment', [
    ('train.py', ['--lora_rank=4', '--lora_alpha=0'], 'lora_alpha=0.0 must be above 0'),
    ('train.py', ['--lora_rank=4', '--lora_alpha=-8'], 'lora_alpha=-8.0 must be above 0'),
    ('train.py', ['--lora_rank=64'], 'lora_rank=64 is larger than the model\'s n_embd=32'),
    ('train.py', ['--lora_alpha=32', '--lora_targets=c_attn,c_fc'],
     "lora_alpha=32.0, lora_targets='c_attn,c_fc' are LoRA settings, but lora_rank=0 trains every weight"),
    ('train.py', ['--fsdp=True'], 'fsdp=True shards the model over the processes of torchrun'),
    ('train.py', ['--backend=glo'], "unknown backend 'glo'"),
    ('train.py', ['--dataset=a\nb'], "dataset='a\\nb' must be a folder name, not empty and without control"),
    ('explain.py', ['--what=next', '--temperatures=nan'], "temperatures='nan' must be numbers above 0 and finite"),
    ('explain.py', ['--what=next', '--temperatures=1,inf'], "temperatures='1,inf' must be numbers above 0"),
    ('explain.py', ['--compare=,,'], "compare=',,' names no model"),
    ('explain.py', ['--vocab_size=0'], 'vocab_size=0 must be at least 1'),
    ('bench.py', ['--mode=generate', '--block_size=8', '--prompt_len=9', '--n_layer=1', '--n_embd=8', '--n_head=1',
                  '--vocab_size=8'], "prompt_len=9 is longer than the model's block_size=8"),
])
def test_settings_that_cannot_work(char_data, script, args, fragment):
    extra = [*TINY, '--out_dir=out'] if script == 'train.py' else ['--device=cpu']
    assert_one_line_error(run_in_process(script, *extra, *args, cwd=char_data), fragment)
    assert not (char_data / 'out').exists()


# -----------------------------------------------------------------------------
# output folders that are files

def test_output_paths_that_are_files(trained):
    (trained / 'taken').write_text('mine')
    r = run_in_process('export_hf.py', '--out_dir=out', '--hf_dir=taken', cwd=trained)
    assert_one_line_error(r, "hf_dir 'taken' is a file, not a folder")
    r = run_in_process('bench.py', '--mode=train', '--device=cpu', '--n_layer=1', '--n_embd=8', '--n_head=1',
                       '--block_size=8', '--batch_size=2', '--vocab_size=16', '--num_steps=1', '--warmup_steps=0',
                       '--profile=True', '--profile_dir=taken', cwd=trained)
    assert_one_line_error(r, "cannot write the profiler's trace", "give another --profile_dir")
    assert (trained / 'taken').read_text() == 'mine'


def test_a_full_disk_during_a_save_says_so(trained, monkeypatch):
    def full(obj, f):
        f.write(b'part')
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0')
    before = checksums(trained / 'out')
    monkeypatch.setattr(torch, 'save', full)
    r = run_in_process('train.py', *TINY, '--out_dir=out', '--max_iters=5', '--init_from=resume', cwd=trained)
    assert_one_line_error(r, "could not write 'out/ckpt.pt' (the write failed with", "MB free on its disk); the "
                             "file there before, if any, is intact")
    assert 'enforce' not in r.stderr
    monkeypatch.undo()
    after = checksums(trained / 'out')
    assert after.pop('log.jsonl') != before.pop('log.jsonl') and after == before


# -----------------------------------------------------------------------------
# data: prepare_text's inputs and folders, token files, tokenizer files

def prepared(tmp_path, *args):
    return run_script('data/prepare_text.py', *args, cwd=tmp_path)


def make_input(tmp_path, kind):
    """An input of a kind a careful user might hand prepare_text; returns (the --input value, fragment or None)."""
    text = shakespeare_text()[:3000]
    if kind == 'fifo':
        os.makedirs(tmp_path / 'docs')
        write(tmp_path / 'docs' / 'a.txt', text)
        os.mkfifo(tmp_path / 'docs' / 'pipe.txt')
        return 'docs', "input 'docs/pipe.txt' is not a regular file (a FIFO, device or socket)"
    if kind == 'dangling':
        os.symlink('gone.txt', tmp_path / 'a.txt')
        return 'a.txt', "input 'a.txt' is a broken symbolic link (to 'gone.txt')"
    if kind == 'loop':
        os.makedirs(tmp_path / 'docs')
        os.symlink('b.txt', tmp_path / 'docs' / 'a.txt')
        os.symlink('a.txt', tmp_path / 'docs' / 'b.txt')
        return 'docs', "input 'docs/a.txt' is a broken symbolic link"
    if kind == 'json':
        write(tmp_path / 'a.json', json.dumps({'text': text}))
        return 'a.json', "input 'a.json' is a .json file: prepare_text reads text files and .jsonl files"
    if kind == 'surrogate':
        write(tmp_path / 'a.jsonl', json.dumps({'text': text}) + '\n' + '{"text": "half \\ud800 of it"}\n')
        return 'a.jsonl', "a.jsonl:2: the text holds a lone surrogate escape (\\ud800)"
    if kind == 'JSONL':  # read as .jsonl, whatever the case of its suffix
        write(tmp_path / 'A.JSONL', ''.join(json.dumps({'text': text[i:i + 300]}) + '\n' for i in range(0, 3000, 300)))
        return 'A.JSONL', None
    if kind == 'bom':  # a byte order mark, as some Windows editors write it
        (tmp_path / 'a.jsonl').write_bytes(b'\xef\xbb\xbf' + ''.join(
            json.dumps({'text': text[i:i + 300]}) + '\n' for i in range(0, 3000, 300)).encode())
        return 'a.jsonl', None
    if kind == 'data is a file':
        write(tmp_path / 'a.txt', text)
        write(tmp_path / 'data', 'not a folder')
        return 'a.txt', f"cannot write '{tmp_path / 'data' / 'x'}': '{tmp_path / 'data'}' is a file, not a folder"
    raise ValueError(kind)


@pytest.mark.parametrize('kind', ['fifo', 'dangling', 'loop', 'json', 'surrogate', 'data is a file'])
def test_prepare_text_refuses_inputs_it_cannot_use(tmp_path, kind):
    item, fragment = make_input(tmp_path, kind)
    r = prepared(tmp_path, f'--input={item}', '--dataset=x')
    assert_one_line_error(r, fragment)
    assert not (tmp_path / 'data' / 'x').exists()


@pytest.mark.parametrize('kind', ['JSONL', 'bom'])
def test_prepare_text_reads_what_a_user_means(tmp_path, kind):
    item, _ = make_input(tmp_path, kind)
    r = prepared(tmp_path, f'--input={item}', '--dataset=x')
    assert r.returncode == 0, r.stderr
    assert '10 documents' in r.stdout  # one a line, not the file as one text
    meta = pickle.loads((tmp_path / 'data' / 'x' / 'meta.pkl').read_bytes())
    assert '\ufeff' not in meta['stoi'] and '{' not in meta['stoi']


def test_a_lone_surrogate_becomes_a_replacement_character_when_asked(tmp_path):
    item, _ = make_input(tmp_path, 'surrogate')
    r = prepared(tmp_path, f'--input={item}', '--dataset=x', '--errors=replace')
    assert r.returncode == 0, r.stderr
    assert '\ufffd' in pickle.loads((tmp_path / 'data' / 'x' / 'meta.pkl').read_bytes())['stoi']


def test_a_newline_in_the_dataset_name(tmp_path):
    write(tmp_path / 'a.txt', 'some text ' * 100)
    assert_one_line_error(prepared(tmp_path, '--input=a.txt', '--dataset=my\ndata'), 'must be a plain folder name')


@enforced_permissions
def test_an_unreadable_input_or_token_file(trained):
    write(trained / 'secret.txt', 'hidden text ' * 100)
    os.chmod(trained / 'secret.txt', 0)
    assert_one_line_error(prepared(trained, '--input=secret.txt', '--dataset=x'),
                          "cannot read input 'secret.txt' (permission denied)")
    train_bin = trained / 'data' / 'shakespeare_char' / 'train.bin'
    os.chmod(train_bin, 0)
    try:
        r = run_in_process('train.py', *TINY, '--out_dir=new', cwd=trained)
    finally:
        os.chmod(train_bin, 0o644)
    assert_one_line_error(r, f"cannot read '{os.path.join('data', 'shakespeare_char', 'train.bin')}' (Permission")


def test_a_garbage_tokenizer_file_is_refused_before_it_is_stored(char_data):
    pytest.importorskip('tokenizers')
    data_dir = char_data / 'data' / 'shakespeare_char'
    (data_dir / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 300, 'tokenizer': 'tokenizer.json'}))
    (data_dir / 'tokenizer.json').write_text('{"this": "is not a tokenizer"}')
    r = run_in_process('train.py', *TINY, '--out_dir=out', cwd=char_data)
    path = os.path.join('data', 'shakespeare_char', 'tokenizer.json')
    assert_one_line_error(r, f"the dataset's tokenizer file '{path}' cannot be read as a tokenizer")
    assert not (char_data / 'out').exists()


def test_a_checkpoints_garbage_tokenizer_is_one_line(trained):
    pytest.importorskip('tokenizers')
    poisoned_checkpoint(trained, tokenizer={'kind': 'bpe', 'json': 'garbage'})
    r = run_in_process('sample.py', '--out_dir=out', '--device=cpu', cwd=trained)
    assert_one_line_error(r, "this model's stored tokenizer cannot be read")


def test_a_dataset_changed_under_a_run(tmp_path):
    from common import UserError
    from data import get_batch
    path = tmp_path / 'train.bin'
    import numpy as np
    np.arange(100, dtype=np.uint16).tofile(path)
    files = [(str(path), 0, 100, None)]  # as data_files gives them: no loss mask
    get_batch(files, 2, 8, 0)
    np.arange(10, dtype=np.uint16).tofile(path)  # prepared again, smaller, while the run goes on
    with pytest.raises(UserError, match="its dataset was changed or deleted while this run used it"):
        get_batch(files, 2, 8, 0)


def test_run_from_another_folder_says_where_the_data_is(tmp_path, monkeypatch):
    import data
    project = tmp_path / 'project'
    os.makedirs(project / 'data' / 'mine')
    (project / 'data' / 'mine' / 'train.bin').write_bytes(b'\x00\x00' * 100)
    monkeypatch.setattr(data, 'PROJECT_DIR', str(project))
    os.makedirs(tmp_path / 'elsewhere')
    r = run_in_process('train.py', *TINY, '--dataset=mine', '--out_dir=out', cwd=tmp_path / 'elsewhere')
    assert_one_line_error(r, f"no train data in 'data/mine' (train.bin or *train*.bin shards) (data/ is read from the "
                             f"current folder, {tmp_path / 'elsewhere'}; the dataset is in "
                             f"{project / 'data' / 'mine'}: run from {project})")


# -----------------------------------------------------------------------------
# plot.py on logs that are not train.py's

@pytest.mark.parametrize('content, fragment', [
    (json.dumps({'iter': 0, 'val_loss': 3.0, 'lr': 1e-3}) + '\n', "is not a record train.py writes (no train_loss)"),
    (json.dumps({'iter': '10', 'loss': 3.0, 'lr': 1e-3}) + '\n', "is not a record train.py writes (iter='10')"),
    (b'{"iter": 0, "loss": 3.0, "lr": 0.001, "note": "\xe9"}\n', "is not UTF-8 text"),
])
def test_plot_refuses_a_log_that_is_not_train_pys(tmp_path, content, fragment):
    write_log(tmp_path / 'run', run_records([4.0, 3.0]))
    with open(tmp_path / 'run' / 'log.jsonl', 'ab') as f:
        f.write(content.encode() if isinstance(content, str) else content)
    assert_one_line_error(run_in_process('plot.py', 'run', cwd=tmp_path), fragment)
    assert not (tmp_path / 'run' / 'loss.png').exists()


def test_plot_draws_muons_own_rate(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    import plot
    records = run_records([4.0, 3.0, 2.5])
    for r in records:
        r['muon_lr'] = r['lr'] * 20
    write_log(tmp_path / 'run', records)
    drawn = []
    real = plot.plot_runs

    def spy(runs, path):
        import matplotlib.axes
        original = matplotlib.axes.Axes.plot
        monkeypatch.setattr(matplotlib.axes.Axes, 'plot',
                            lambda self, *a, **k: drawn.append(k.get('label')) or original(self, *a, **k))
        return real(runs, path)
    monkeypatch.setattr(plot, 'plot_runs', spy)
    r = run_in_process('plot.py', 'run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'run: lr (AdamW)' in drawn and 'run: Muon lr (right axis)' in drawn


def test_a_muon_run_logs_muons_rate(char_data, monkeypatch):
    import train
    from helpers import read_log, tiny_cfg
    monkeypatch.chdir(char_data)
    train.train(tiny_cfg(char_data, max_iters=2, optimizer='muon', muon_lr=0.02, learning_rate=1e-3))
    for record in read_log(char_data / 'out'):
        assert record['muon_lr'] == pytest.approx(record['lr'] * 0.02 / 1e-3)


def test_explain_compare_says_what_its_total_counts(capsys):
    import explain
    text = explain.explain(dict(explain.DEFAULTS, compare='gpt2'))
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[1:-1]}
    assert rows['total'] == '124,439,808' and text.splitlines()[-1].startswith("total counts every parameter, wpe")
    assert int(rows['without'].replace(',', '')) == 124_439_808 - 1024 * 768  # train.py's count
