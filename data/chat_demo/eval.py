"""
The chat demo's accuracy: the share of questions a model answers correctly, each asked alone as `chat.py --prompt`
asks it (greedy: temperature 0). The questions: heldout.jsonl's 200 (100 sums and 100 words that no training
conversation holds, written by data/chat_demo/prepare.py), and with --typed=True also 40 typed here by hand (English
words, and sums, that the generator did not make), scored apart. A sum is right when the last number in the reply is
the sum; a word when the last word in the reply is the word reversed.

$ python data/chat_demo/eval.py --out_dir=out-chat-demo
$ python data/chat_demo/eval.py --out_dir=out-chat-demo --typed=True --show=10
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import chat  # noqa: E402
from common import run_main  # noqa: E402
from configurator import as_namespace, config_from_globals, load_config  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = 'out-chat-demo'  # the run to evaluate
init_from = 'resume'  # or a Hugging Face folder exported from it
questions = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'heldout.jsonl')
typed = False  # also the questions typed below
show = 0  # print this many wrong answers of each kind in each set
system = ''  # a system message before each question; '': none
device = 'cpu'
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())

TYPED_WORDS = ['cat', 'house', 'river', 'planet', 'garden', 'python', 'banana', 'Paris', 'window', 'coffee',
               'yellow', 'mirror', 'turtle', 'Berlin', 'guitar', 'orange', 'kitten', 'rocket', 'summer', 'pencil']
TYPED_SUMS = [(12, 34), (99, 99), (0, 0), (7, 58), (45, 55), (81, 19), (3, 4), (60, 70), (25, 77), (90, 9),
              (50, 50), (1, 99), (38, 46), (64, 36), (17, 83), (42, 58), (11, 11), (73, 8), (29, 71), (55, 66)]


def typed_questions():
    return ([{'question': f"Reverse the word {w}.", 'answer': w[::-1]} for w in TYPED_WORDS] +
            [{'question': f"What is {a} + {b}?", 'answer': str(a + b)} for a, b in TYPED_SUMS])


def is_correct(question, reply):
    """A sum: the last number in the reply is the answer. A word: the last word in the reply is the answer."""
    found = re.findall(r'\d+' if question['question'].startswith('What is') else r'[A-Za-z]+', reply)
    return bool(found) and found[-1] == question['answer']


def evaluate(cfg):
    """Ask each question alone (greedy); print and return the accuracy of each set (held-out, typed) and skill."""
    cfg = as_namespace(cfg)
    with open(cfg.questions, encoding='utf-8') as f:
        sets = {'held-out': [json.loads(line) for line in f if line.strip()]}
    if cfg.typed:
        sets['typed'] = typed_questions()
    settings = as_namespace(dict(chat.DEFAULTS, out_dir=cfg.out_dir, init_from=cfg.init_from, system=cfg.system,
                                 device=cfg.device, temperature=0.0, max_new_tokens=64))
    session, rt, note = chat.load_chat(settings)
    if note:
        print(note)  # which checkpoint the accuracy is of
    scores = {}
    for name, asked in sets.items():
        right = {'sums': [], 'words': []}
        for question in asked:
            session.clear()
            with rt.autocast:
                reply = session.respond(question['question'], settings, stream=False)
            kind = 'sums' if question['question'].startswith('What is') else 'words'
            right[kind].append(is_correct(question, reply))
            if not right[kind][-1] and sum(not ok for ok in right[kind]) <= cfg.show:
                print(f"wrong: {question['question']!r} -> {reply!r} (expected {question['answer']})")
        scores[name] = {kind: sum(oks) / len(oks) for kind, oks in right.items()}
        scores[name]['all'] = sum(map(sum, right.values())) / len(asked)
        print(f"{cfg.out_dir}, {name}: {scores[name]['all']:.1%} of {len(asked)} questions right (sums "
              f"{scores[name]['sums']:.1%} of {len(right['sums'])}, words {scores[name]['words']:.1%} of "
              f"{len(right['words'])})")
    return scores


def main(argv=None):
    evaluate(load_config(DEFAULTS, argv))


if __name__ == '__main__':
    run_main(main)
