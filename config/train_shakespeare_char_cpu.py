# the baby Shakespeare model sized for a laptop CPU, trained with Muon: a val loss of 1.85-1.87 in 600 iterations,
# where nanoGPT's AdamW recipe (config/train_shakespeare_char_cpu_adamw.py) needs 2000 for 1.88
# $ python train.py config/train_shakespeare_char_cpu.py

out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20
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

# Muon for the matrices inside the blocks at muon_lr, AdamW for the rest at learning_rate, one schedule;
# muon_lr 0.03 and 600 iterations are the best of the sweep in docs/muon.md
optimizer = 'muon'
muon_lr = 0.03
learning_rate = 1e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
