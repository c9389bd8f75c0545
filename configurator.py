"""
Settings for the scripts: a block of defaults at the top of each script, overridden in order by
Python config files and --key=value arguments, then checked against the defaults' names and types.

$ python train.py config/override_file.py --batch_size=32 --compile=False

A config file is plain Python; its top-level assignments override the defaults, and it may use the
values set before it (e.g. `gradient_accumulation_steps = 5 * 8`). An argument's value is read as a
Python literal (1e-3, False, None, 'x'); anything that is not a literal is taken as a string, so
--start=Once upon a time needs no extra quotes. A setting whose default is a list (of strings) may be
given several times, --input=a.txt --input=b.txt, each value taken as written.
"""

import ast
import difflib
import io
import math
import os
import sys
import tokenize
import types as types_module
from types import SimpleNamespace


class ConfigError(Exception):
    """A setting the user got wrong; the scripts report it in one line and exit with status 2."""


def _type_name(t):
    return t.__name__ if isinstance(t, type) else ' or '.join(x.__name__ for x in t)


def _check(key, value, defaults, types):
    """Return value converted to the key's type, or raise ConfigError naming what is wrong."""
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ConfigError(f"unknown config key '{key}'{hint}")
    if key in types:
        expected = types[key]
        if value is None:
            return value  # None means 'automatic' or 'off' for the keys that allow it
    elif defaults[key] is None:
        return value
    else:
        expected = type(defaults[key])
    expected = expected if isinstance(expected, tuple) else (expected,)
    if float in expected and type(value) is int:
        return float(value)  # --learning_rate=1 means 1.0
    if list in expected and type(value) is list and not all(isinstance(x, str) for x in value):
        raise ConfigError(f"{key}={value!r} must be a list of strings")
    if type(value) in expected:  # exact: a bool is not accepted where an int is expected, nor 1 for True
        return value
    raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {_type_name(expected)}")


def _parse_value(key, text, defaults, types):
    """Read an argument's value: a Python literal, else the bare string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    # a string setting takes the text as written: --start=42 is the prompt '42'
    if isinstance(defaults.get(key), str) and not isinstance(value, str) and key not in types:
        return text
    return value


def _apply_file(path, config, defaults, types):
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a folder; give a Python file such as config/train_gpt2.py")
    if not os.path.isfile(path):
        hint = f"; settings are written --{path}" if '=' in path else ''
        raise ConfigError(f"config file '{path}' not found{hint}")
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {e.start}: {e.reason}); "
                          f"save it as UTF-8") from None
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ConfigError(f"config file '{path}' line {e.lineno}: {e.msg}") from None
    namespace = dict(config)
    try:
        exec(compile(tree, path, 'exec'), namespace)
    except Exception as e:
        raise ConfigError(f"config file '{path}' failed: {type(e).__name__}: {e}") from None
    for key, value in namespace.items():
        if key.startswith('_') or isinstance(value, (types_module.ModuleType, type)) or callable(value):
            continue  # imports and helpers in the file are not settings
        if key in config and value is config[key]:
            continue
        try:
            config[key] = _check(key, value, defaults, types)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def parse_config(defaults, argv, types=None):
    """
    Return a new dict of settings: defaults, then each config file and --key=value in argv, in order.
    types maps a key to the type (or tuple of types) it takes where the default alone does not say,
    e.g. {'compile': bool} for a default of None meaning 'automatic'.
    """
    types = types or {}
    config = dict(defaults)
    listed = set()  # the list settings given on the command line so far
    for arg in argv:
        if not arg.startswith('--'):
            _apply_file(arg, config, defaults, types)
            continue
        key, sep, text = arg[2:].partition('=')  # split on the first '=' only: values may contain '='
        if not sep:
            raise ConfigError(f"argument '{arg}' has no value; write --{key}=VALUE")
        if isinstance(defaults.get(key), list):
            # each occurrence adds one value; together they replace the list of the defaults and config files
            config[key] = (config[key] if key in listed else []) + [text]
            listed.add(key)
            continue
        config[key] = _check(key, _parse_value(key, text, defaults, types), defaults, types)
    return config


class Defaults(dict):
    """A script's default settings, by name, with the script's file and docstring for --help."""

    def __init__(self, settings, script=None, doc=None):
        super().__init__(settings)
        self.script, self.doc = script, doc


def config_from_globals(namespace):
    """The settings block of a script: its top-level lowercase names holding plain values (not CONSTANTS)."""
    return Defaults({k: v for k, v in namespace.items() if k.islower() and not k.startswith('_')
                     and isinstance(v, (int, float, bool, str, list, type(None)))},
                    namespace.get('__file__'), namespace.get('__doc__'))


def load_config(defaults, argv=None, types=None):
    """
    parse_config of a script's command line (sys.argv by default), as a namespace: cfg.batch_size.
    -h or --help prints the script's help and settings and exits, before anything is read or written.
    """
    argv = sys.argv[1:] if argv is None else argv
    exit_if_help(argv, getattr(defaults, 'doc', None), defaults)
    return as_namespace(parse_config(defaults, argv, types))


# -----------------------------------------------------------------------------
# --help: the script's docstring, then its settings with their defaults and the comments beside them

HELP_FLAGS = ('-h', '--help')
HOW = """Settings are applied in order: the defaults below, then each config file (plain Python that assigns
some of these names, e.g. config/train_shakespeare_char.py), then each --key=value. A value is read as a
Python literal (1e-3, False, None, 'x'), anything else as text: --start=Once upon a time."""


def exit_if_help(argv, doc, defaults=None):
    """Print the help and exit with status 0 when argv asks for it (-h or --help anywhere)."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return
    print((doc or '').strip())
    if defaults:
        print(f"\n{HOW}\n\nSettings (default, comment):")
        for line in settings_help(defaults, getattr(defaults, 'script', None)):
            print(line)
    sys.exit(0)


def settings_help(defaults, script):
    """One line per setting, --key=default  # its comment in the script, under the block's own headings."""
    comments, headings = settings_comments(script, defaults)
    width = max(len(f'--{k}={v!r}') for k, v in defaults.items()) + 2
    lines = []
    for key, value in defaults.items():
        lines += [f'{heading}' for heading in headings.get(key, [])]
        text = f'  --{key}={value!r}'
        lines.append(f'{text:<{width + 2}}# {comments[key]}' if comments.get(key) else text)
    return lines


def settings_comments(script, keys):
    """
    From a script's source: the comment at the end of each setting's line, and the comment lines just above a
    setting (a heading such as '# model'), by setting name. ({}, {}) when the source cannot be read.
    """
    try:
        with open(script, encoding='utf-8') as f:
            source = f.read()
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}, {}
    line_comments = {t.start[0]: t.string.lstrip('#').strip() for t in tokens if t.type == tokenize.COMMENT}
    lines = source.splitlines()
    comments, headings = {}, {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in keys and node.targets[0].id not in comments):
            continue
        key = node.targets[0].id
        comments[key] = line_comments.get(node.end_lineno, '')
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].lstrip().startswith('#') and n in line_comments and line_comments[n].strip('-'):
            above.insert(0, line_comments[n])
            n -= 1
        headings[key] = above
    return comments, headings


def require(cfg, keys, test, what):
    """
    A ConfigError naming the first of keys (one or a tuple) whose value fails test, e.g.
    require(cfg, ('batch_size', 'n_layer'), lambda v: v >= 1, 'at least 1'). NaN and infinities always fail;
    None passes (the keys that allow it mean 'automatic' or 'off' by it).
    """
    for key in keys if isinstance(keys, tuple) else (keys,):
        value = getattr(cfg, key)
        finite = not isinstance(value, float) or math.isfinite(value)
        if value is not None and not (finite and test(value)):
            raise ConfigError(f"{key}={value!r} must be {what}")


SEED_RANGE = (lambda v: 0 <= v < 2 ** 64, 'in [0, 2**64)')  # what torch.manual_seed and numpy's generators take


def as_namespace(cfg):
    """Settings given as a dict or a namespace, as a new namespace (the caller's object is never changed)."""
    return SimpleNamespace(**(cfg if isinstance(cfg, dict) else vars(cfg)))
