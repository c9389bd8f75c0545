"""The project's shape: imports point one way, down to common.py, and the scripts' functions stay short."""

import ast
import glob
import os

import pytest

from helpers import REPO

MODULES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, '*.py')))


def imports_of(name):
    """The project modules a top-level module imports anywhere in it, inside functions too."""
    with open(os.path.join(REPO, f'{name}.py'), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split('.')[0])
    return found & set(MODULES) - {name}


def find_cycle(graph):
    """A list of modules that import each other in a circle, or None."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_top_level_modules_import_no_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    assert {'model', 'train', 'common', 'data', 'configurator'} <= set(graph)
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_the_base_modules_import_nothing_above_them():
    assert imports_of('configurator') == set()
    assert imports_of('common') <= {'configurator'}
    # data.find_tokenizer imports these inside the function: the prepare scripts never load torch
    assert imports_of('data') <= {'common', 'configurator', 'hf', 'model'}


def test_model_py_stands_alone():
    """The walkthrough's file: it imports no module of the project, so it can be read, and copied, on its own."""
    assert imports_of('model') == set()


def test_the_concepts_live_in_the_files_of_their_names():
    """model.py is the walkthrough's file (GPT near the top); LoRA, the optimizers and checkpoints have their own."""
    with open(os.path.join(REPO, 'model.py'), encoding='utf-8') as f:
        source = f.read()
    tree = ast.parse(source)
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes[:6] == ['LayerNorm', 'CausalSelfAttention', 'MLP', 'Block', 'GPTConfig', 'GPT']
    assert next(n.lineno for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'GPT') < 200
    assert len(source.splitlines()) <= 450
    defined = {name: {n.name for n in ast.parse(open(os.path.join(REPO, f'{name}.py'), encoding='utf-8').read()).body
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef))} for name in ('lora', 'optim', 'checkpoint')}
    assert {'LoRALinear', 'add_lora', 'merge_lora'} <= defined['lora']
    assert {'Muon', 'ChainedOptimizer', 'configure_optimizer'} <= defined['optim']
    assert {'save_checkpoint', 'load_checkpoint', 'load_model', 'own_out_dir'} <= defined['checkpoint']


def test_train_py_shows_the_run_first():
    """The run itself (train, start_run, train_loop) comes right after the settings, before its helpers."""
    with open(os.path.join(REPO, 'train.py'), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    lines = {n.name: n.lineno for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert lines['train'] < lines['start_run'] < lines['train_loop'] <= 250
    assert all(lines['train_loop'] < line for name, line in lines.items() if name not in ('train', 'start_run',
                                                                                          'train_loop'))


def test_the_scripts_functions_fit_on_a_screen():
    for script in ('train.py', 'sample.py', 'bench.py', 'serve.py', 'chat.py'):
        with open(os.path.join(REPO, script), encoding='utf-8') as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{script}: {node.name} is {length} lines"


def test_the_scripts_import_common_before_torch():
    """
    common sets OMP_WAIT_POLICY, which torch's OpenMP reads once, as torch is imported: a script that loads torch
    (itself, or through another module of the project) before common would run with OpenMP's spinning threads.
    """
    scripts = []
    for name in MODULES:
        with open(os.path.join(REPO, f'{name}.py'), encoding='utf-8') as f:
            tree = ast.parse(f.read())
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        modules = [(node.names[0].name if isinstance(node, ast.Import) else node.module).split('.')[0] for node in top]
        if 'torch' not in modules or "'__main__'" not in ast.unparse(tree):
            continue
        scripts.append(name)
        first = next(m for m in modules if m in set(MODULES) | {'torch', 'numpy'})
        assert first == 'common', f"{name}.py imports {first} before common"
    assert {'train', 'sample', 'bench'} <= set(scripts)


def test_openmp_waits_asleep_on_a_busy_machine_and_spins_briefly_on_a_quiet_one():
    from common import openmp_wait_policy
    busy, quiet, mine = {}, {}, {'KMP_BLOCKTIME': '0'}
    openmp_wait_policy(busy, others=1, cores=2)
    three = {}
    openmp_wait_policy(three, others=1, cores=3)  # one of three cores is less than half: a short spin
    openmp_wait_policy(quiet, others=0, cores=2)
    openmp_wait_policy(mine, others=9, cores=2)
    assert busy == {'OMP_WAIT_POLICY': 'PASSIVE'} and quiet == three == {'GOMP_SPINCOUNT': '10000'}
    unknown = {}
    openmp_wait_policy(unknown, others=None, cores=2)  # not known (no /proc/loadavg): a short spin
    assert unknown == {'GOMP_SPINCOUNT': '10000'}
    if os.path.exists('/proc/loadavg'):
        import common
        assert isinstance(common.others_running(), int) and common.others_running() >= 0
    assert mine == {'KMP_BLOCKTIME': '0'}  # the user's own choice is kept


@pytest.mark.slow
def test_torch_sees_the_wait_policy():
    """The policy is in the environment when train.py's import of torch loads OpenMP; a user's own choice is kept."""
    import subprocess
    import sys
    hook = ("import os, sys\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n"
            "            sys.meta_path.remove(self)\n"
            "sys.meta_path.insert(0, Hook())\n"
            "import train\n")
    for setting, seen in (({}, {'PASSIVE None', 'None 10000'}), ({'OMP_WAIT_POLICY': 'active'}, {'active None'}),
                          ({'GOMP_SPINCOUNT': '300000'}, {'None 300000'})):  # libgomp's own default spin
        env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')}
        env.update(setting)
        out = subprocess.run([sys.executable, '-c', hook], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout
        assert out.splitlines()[0] in seen  # {}: asleep or a short spin, by the machine's load
