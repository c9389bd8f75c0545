# the baby Shakespeare model sized for a laptop CPU, trained with Muon: a val loss of 1.86 to 1.87 in 550 iterations,
# where nanoGPT's AdamW recipe (config/train_shakespeare_char_cpu_adamw.py) needs 2000 for 1.88, in under 0.4x its
# time on an AVX2 CPU (docs/time-to-loss.md, which measured each setting below alone)
# $ python train.py config/train_shakespeare_char_cpu.py

out_dir = 'out-shakespeare-char'
eval_interval = 550  # at the start and the end only: each eval costs as much as 7 to 14 training iterations
eval_iters = 20  # as many val tokens as the AdamW recipe's evals
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
zero_init_proj = True  # each block starts as the identity: 1.88 some 25 iterations sooner

# Muon for the matrices inside the blocks at muon_lr, AdamW for the rest at learning_rate, one schedule;
# muon_lr 0.03 is the best of the sweep in docs/muon.md
optimizer = 'muon'
muon_lr = 0.03
muon_momentum_warmup_iters = 300  # from 0.85 to 0.95: 1.88 some 25 iterations sooner
learning_rate = 1e-3
max_iters = 550  # 500 reach 1.873-1.880, too close to 1.88 to promise it
lr_decay_iters = 550
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 20  # shorter than the 100 of before: lower at 500 iterations than 50 or 100

device = 'cpu'
compile = False
