"""
Loss curves from train.py's log.jsonl: the loss of each logged step, the train and val loss of each eval, and
the learning rate, for one run or several overlaid. Needs matplotlib (pip install matplotlib).

$ python plot.py out-shakespeare-char                  # writes out-shakespeare-char/loss.png
$ python plot.py out-a out-b --png=compare.png         # two runs on the same axes
"""

import json
import os
import struct
import sys

from common import UserError, os_reason, run_main
from configurator import config_from_globals, load_config

# -----------------------------------------------------------------------------
png = None  # where to write the figure; None: loss.png in the first run's folder
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())
TYPES = {'png': str}
DPI = 100  # figure sizes are whole tenths of an inch, so the PNG's size in pixels is exact


# -----------------------------------------------------------------------------
# figures: matplotlib is imported only here, when a PNG is asked for

def pyplot():
    """matplotlib.pyplot, drawing to files only (no window), or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("drawing a PNG needs matplotlib: pip install matplotlib") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def png_size(path):
    """(width, height) in pixels from a PNG file's header (its IHDR chunk)."""
    with open(path, 'rb') as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b'\x89PNG\r\n\x1a\n' or head[12:16] != b'IHDR':
        raise ValueError(f"'{path}' is not a PNG file")
    return struct.unpack('>II', head[16:24])


def png_path(png, folder=None):
    """
    Where a figure asked for with --png=png goes: a bare file name into folder (a run's out_dir) when one is
    given, any other path as it is. It must be a .png file that can be written; a file there that is not a PNG (a
    checkpoint, say) is refused, never replaced. Checked before any work, so that a mistake costs nothing.
    """
    if not png.lower().endswith('.png'):
        raise UserError(f"--png={png!r} must name a .png file: the figure is written as a PNG")
    path = os.path.join(folder, png) if folder and not os.path.dirname(png) else png
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"cannot write '{path}': it is a folder; give --png a file name ending in .png")
    if not os.path.isdir(parent):
        raise UserError(f"cannot write '{path}': no folder '{parent}'; create it or give another --png")
    if os.path.exists(path):
        try:
            png_size(path)
        except (ValueError, OSError):
            raise UserError(f"'{path}' exists and is not a PNG; refusing to replace it: give another --png") from None
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise UserError(f"cannot write '{path}' (permission denied); give another --png")
    return path


def save_png(fig, path):
    """Write fig to path as a PNG, close it, and say where and how large; returns (width, height) in pixels."""
    path = png_path(path)
    try:
        fig.savefig(path, dpi=DPI, format='png')
    except OSError as e:
        raise UserError(f"cannot write '{path}' ({os_reason(e)}); give another --png") from None
    finally:
        pyplot().close(fig)
    width, height = png_size(path)
    print(f"wrote {path} ({width}x{height} pixels)")
    return width, height


# -----------------------------------------------------------------------------
# the runs' logs

def read_log(out_dir):
    """
    A run's log.jsonl as (steps, evals): lists of records in iteration order. A resumed run appends, and
    repeats the iterations after its checkpoint; the later record of an iteration replaces the earlier one.
    """
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.isdir(out_dir):
        raise UserError(f"no run folder '{out_dir}'; give the out_dir of a train.py run")
    if not os.path.isfile(path):
        raise UserError(f"'{out_dir}' has no log.jsonl; give the out_dir of a train.py run")
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().split('\n')
    except UnicodeDecodeError as e:
        raise UserError(f"'{path}' is not UTF-8 text (byte {e.start:,}: {e.reason}), so not a log train.py "
                        f"wrote; give the out_dir of a train.py run") from None
    except OSError as e:
        raise UserError(f"cannot read '{path}' ({os_reason(e)}); fix its permissions") from None
    steps, evals = {}, {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines) or record is None and line.startswith('{'):
                continue  # the last line, still being written, or a record cut off when a run was killed
            raise UserError(f"'{path}' line {number} is not a JSON object; fix or delete that line")
        kind = evals if 'val_loss' in record else steps if 'loss' in record else None
        if kind is None:
            continue  # a record of another kind (a later version's, say): nothing to draw
        need = ('iter', 'train_loss', 'val_loss', 'lr') if kind is evals else ('iter', 'loss', 'lr')
        bad = [k for k in need if type(record.get(k)) not in ((int,) if k == 'iter' else (int, float))]
        if bad:
            what = ', '.join(f"{k}={record[k]!r}" if k in record else f"no {k}" for k in bad)
            raise UserError(f"'{path}' line {number} is not a record train.py writes ({what}); fix or delete "
                            f"that line")
        kind[record['iter']] = record
    if not evals:
        raise UserError(f"run '{out_dir}' has no evals yet: train.py logs the first one at iteration 0 when "
                        f"it finishes; plot again after that")
    return [steps[i] for i in sorted(steps)], [evals[i] for i in sorted(evals)]


def summary(out_dir, steps, evals):
    best = min(evals, key=lambda r: r['val_loss'])
    return (f"{out_dir}: {len(evals)} evals up to iteration {evals[-1]['iter']}, best val loss "
            f"{best['val_loss']:.4f} at iteration {best['iter']}, {len(steps)} logged steps")


def plot_runs(runs, path):
    """Draw runs ({out_dir: (steps, evals)}) into the PNG at path: losses above, the learning rate below."""
    plt = pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), dpi=DPI,
                                         gridspec_kw={'height_ratios': [3, 1]})
    ax_muon = None
    for i, (out_dir, (steps, evals)) in enumerate(runs.items()):
        color = f'C{i}'
        if steps:
            ax_loss.plot([r['iter'] for r in steps], [r['loss'] for r in steps], color=color, alpha=0.3,
                         linewidth=0.8, label=f'{out_dir}: loss of each logged step')
        it = [r['iter'] for r in evals]
        ax_loss.plot(it, [r['train_loss'] for r in evals], '--', marker='.', color=color,
                     label=f'{out_dir}: train loss (eval)')
        ax_loss.plot(it, [r['val_loss'] for r in evals], '-', marker='o', markersize=4, color=color,
                     label=f'{out_dir}: val loss (eval)')
        # a step's record has the rate it ran with; an eval's, the rate of the step after it: one line of each.
        # A Muon run's matrices have a rate of their own (muon_lr, on its own scale: the right-hand axis)
        lrs = steps or evals
        ax_lr.plot([r['iter'] for r in lrs], [r['lr'] for r in lrs], color=color, label=f'{out_dir}: lr (AdamW)')
        muon = [r for r in lrs if 'muon_lr' in r]
        if muon:
            ax_muon = ax_muon or ax_lr.twinx()
            ax_muon.plot([r['iter'] for r in muon], [r['muon_lr'] for r in muon], '--', color=color,
                         label=f'{out_dir}: Muon lr (right axis)')
    ax_loss.set_ylabel('loss (cross-entropy, nats)')
    ax_loss.set_title('loss curves')
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_lr.set_ylabel('learning rate')
    ax_lr.set_xlabel('iteration')
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
    if ax_muon:
        ax_muon.set_ylabel('Muon learning rate')
        ax_muon.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        handles = [h for ax in (ax_lr, ax_muon) for h in ax.get_legend_handles_labels()[0]]
        ax_lr.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out_dirs = [a for a in argv if not a.startswith('-')]
    cfg = load_config(DEFAULTS, [a for a in argv if a.startswith('-')], TYPES)  # settings, and -h for the help
    if not out_dirs:
        raise UserError("give one or more run folders: python plot.py OUT_DIR [OUT_DIR ...] [--png=path]")
    runs = {d: read_log(d) for d in out_dirs}
    path = png_path(cfg.png) if cfg.png else png_path('loss.png', out_dirs[0])
    for out_dir, (steps, evals) in runs.items():
        print(summary(out_dir, steps, evals))
    return plot_runs(runs, path)


if __name__ == '__main__':
    run_main(main)
