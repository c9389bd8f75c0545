# the baby Shakespeare model of config/train_shakespeare_char.py (6 x 6 x 384, block 256, batch 64, dropout
# 0.2), trained with Muon for the matrices inside the blocks:
# $ python train.py config/train_shakespeare_char_muon.py
# NOT MEASURED HERE (no GPU). muon_lr, momentum and warmup are what the CPU sweep at the smaller shape found
# best (docs/muon.md), in line with the modded-nanogpt speedrun's Muon lr of 0.02 and momentum
# 0.95; the iteration count is a guess from that sweep, where Muon needed about 3x fewer iterations than AdamW
# for the same val loss. Watch the val loss: with dropout 0.2 this model overfits after its best.

out_dir = 'out-shakespeare-char-muon'
eval_interval = 250
eval_iters = 200
log_interval = 10

always_save_checkpoint = False

wandb_log = False  # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-muon'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

optimizer = 'muon'
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 1e-3  # AdamW: the embeddings, biases and LayerNorm gains, as in the AdamW recipe
max_iters = 2000  # AdamW's recipe: 5000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99

warmup_iters = 100
