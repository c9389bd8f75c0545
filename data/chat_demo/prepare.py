"""
A chat task to check on a laptop: seeded synthetic conversations in which an assistant adds two numbers (0 to 99)
and reverses words, with system prompts, several turns and varied phrasings (among them exactly
`What is A + B?` and `Reverse the word W.`). Writes chats.jsonl, the character-level dataset of it (train.bin,
val.bin, their loss masks and meta.pkl: data/prepare_text.py --format=chat) and heldout.jsonl beside this file:
200 questions (100 sums, 100 words) that no conversation holds, for data/chat_demo/eval.py.

$ python data/chat_demo/prepare.py
$ python train.py config/train_chat_demo_cpu.py
$ python chat.py --out_dir=out-chat-demo --prompt="What is 12 + 34?"
$ python data/chat_demo/eval.py --out_dir=out-chat-demo
"""

import json
import os
import random
import string
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))  # data/prepare_text.py
import prepare_text  # noqa: E402
from configurator import as_namespace, config_from_globals, load_config  # noqa: E402
from common import run_main  # noqa: E402

# -----------------------------------------------------------------------------
conversations = 40000  # how many conversations to write
heldout = 100  # questions of each skill kept out of every conversation, for eval.py
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = config_from_globals(globals())

BLOCK_SIZE = 256  # config/train_chat_demo_cpu.py's: 93% of the conversations fit it, the others are cut
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "You add numbers and reverse words.",
    "You are a tiny assistant that can do sums and spell words backwards.",
    "Be concise.",
    "Answer in one line.",
]
SUM_QUESTIONS = [
    "What is {a} + {b}?",
    "What is {a} plus {b}?",
    "What's {a} + {b}?",
    "Add {a} and {b}.",
    "Please add {a} and {b}.",
    "Compute {a} + {b}.",
    "{a} + {b} = ?",
    "How much is {a} plus {b}?",
    "Can you add {a} to {b}?",
    "What do you get when you add {a} and {b}?",
]
# the first reply of each skill is the assistant's usual one (SHOWN_WORK of the time): it shows its work before the
# answer, which a small model learns far sooner than the answer alone. A sum is worked as on paper: the ones, then the
# tens with the carry, then the answer (sum_work)
SUM_REPLIES = ["{work}", "{a} + {b} = {s}.", "The answer is {s}.", "{s}", "{a} plus {b} is {s}.", "That makes {s}.",
               "It is {s}."]
WORD_QUESTIONS = [
    "Reverse the word {w}.",
    "How do you spell {w} backwards?",
    "What is {w} reversed?",
    "Write {w} backwards.",
    "Please reverse {w}.",
    "Spell {w} in reverse.",
    "Can you reverse the word {w}?",
    "Reverse this word: {w}",
]
WORD_REPLIES = ["{w} reversed is {r}.", "{r}", "Backwards, {w} is {r}.", "Here it is: {r}", "That gives {r}."]
SHOWN_WORK = 0.75
SUMS, WORDS = 0.4, 0.5  # of the user's turns; the rest is small talk
ONE_DIGIT = 0.25  # of the numbers in sums (a tenth if drawn evenly): each comes up 3x as often as a two-digit one
CHATTER = [
    ("Hello!", ["Hello! How can I help?", "Hi! Ask me a sum or a word to reverse."]),
    ("Hi", ["Hi! What can I do for you?", "Hello!"]),
    ("Thanks!", ["You're welcome!", "Glad to help."]),
    ("Thank you.", ["You're welcome.", "Any time!"]),
    ("What can you do?", ["I can add two numbers and reverse words.", "Sums and words spelled backwards."]),
    ("Who are you?", ["I am a small assistant trained from scratch.", "A tiny chat model."]),
]


def random_word(rng):
    """A word of 3 to 8 letters, lowercase or (one in ten) capitalised: any letters, so any word can be asked."""
    word = ''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    return word.capitalize() if rng.random() < 0.1 else word


def heldout_questions(rng, n):
    """n sums (unordered pairs: neither order is trained) and n words that no conversation will hold."""
    pairs, words = set(), set()
    while len(pairs) < n:
        pairs.add(tuple(sorted((rng.randint(0, 99), rng.randint(0, 99)))))
    while len(words) < n:
        words.add(random_word(rng))
    return sorted(pairs), sorted(words)


def sum_work(a, b):
    """a + b worked as on paper: '7 + 4 = 11, 2 + 2 + 1 = 5, so 27 + 24 = 51.'"""
    ones = a % 10 + b % 10
    carry = ' + 1' if ones >= 10 else ''
    tens = a // 10 + b // 10 + ones // 10
    return f"{a % 10} + {b % 10} = {ones}, {a // 10} + {b // 10}{carry} = {tens}, so {a} + {b} = {a + b}."


def reply_template(rng, replies):
    return replies[0] if rng.random() < SHOWN_WORK else rng.choice(replies[1:])


def user_turn(rng, held_pairs, held_words):
    """A user message and the assistant's reply: a sum, a word to reverse, or small talk."""
    kind = rng.random()
    if kind >= SUMS + WORDS:
        question, replies = rng.choice(CHATTER)
        return question, rng.choice(replies)
    if kind < SUMS:
        while True:
            a, b = (rng.randint(0, 9) if rng.random() < ONE_DIGIT else rng.randint(10, 99) for _ in range(2))
            if tuple(sorted((a, b))) not in held_pairs:
                break
        reply = reply_template(rng, SUM_REPLIES).format(a=a, b=b, s=a + b, work=sum_work(a, b))
        return rng.choice(SUM_QUESTIONS).format(a=a, b=b), reply
    while True:
        w = random_word(rng)
        if w.lower() not in held_words:
            break
    return rng.choice(WORD_QUESTIONS).format(w=w), reply_template(rng, WORD_REPLIES).format(w=w, r=w[::-1])


def conversation(rng, held_pairs, held_words):
    """A system prompt (two in three), then one to four turns."""
    messages = [{'role': 'system', 'content': rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 2 / 3 else []
    for _ in range(rng.randint(1, 4)):
        question, reply = user_turn(rng, held_pairs, held_words)
        messages += [{'role': 'user', 'content': question}, {'role': 'assistant', 'content': reply}]
    return messages


def write_lines(path, records):
    with open(path, 'w', encoding='utf-8') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')


def prepare(data_dir, cfg=DEFAULTS):
    """Write the conversations, their dataset and the held-out questions into data_dir."""
    cfg = as_namespace(cfg)
    rng = random.Random(cfg.seed)
    pairs, words = heldout_questions(rng, cfg.heldout)
    held_pairs, held_words = set(pairs), {w.lower() for w in words}
    chats = os.path.join(data_dir, 'chats.jsonl')
    write_lines(chats, ({'messages': conversation(rng, held_pairs, held_words)} for _ in range(cfg.conversations)))
    questions = ([{'question': f"What is {a} + {b}?", 'answer': str(a + b)} for a, b in
                  (p if rng.random() < 0.5 else p[::-1] for p in pairs)] +
                 [{'question': f"Reverse the word {w}.", 'answer': w[::-1]} for w in words])
    write_lines(os.path.join(data_dir, 'heldout.jsonl'), questions)
    settings = dict(prepare_text.DEFAULTS, input=[chats], dataset=os.path.basename(os.path.normpath(data_dir)),
                    format='chat', tokenizer='char', block_size=BLOCK_SIZE, overwrite=True, val_fraction=0.05)
    prepare_text.prepare_text(settings, os.path.dirname(os.path.normpath(data_dir)))
    print(f"wrote {chats} ({cfg.conversations:,} conversations) and heldout.jsonl ({len(questions)} questions)")


def main(argv=None):
    prepare(os.path.dirname(os.path.abspath(__file__)), load_config(DEFAULTS, argv))


if __name__ == '__main__':
    run_main(main)
