# GPT-2 (124M) on FineWeb10B as config/train_gpt2_fineweb.py, with Muon for the matrices inside the blocks:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb_muon.py
# NOT MEASURED HERE (no GPU). The settings are those of the modded-nanogpt speedrun's optimizer comparison
# (records/102924_Optimizers, its Muon log): Muon lr 0.02, momentum 0.95, the tied embedding/head on Adam at
# 0.0036, betas (0.9, 0.95), no weight decay, 5100 iterations of 524,288 tokens (2.7B tokens), which reached a
# FineWeb val loss of 3.276 there -- with rotary embeddings, QK-norm, ReLU^2 and zero-init projections, which
# GPT-2's model here does not have, so expect a higher loss at 5100 iterations than that.

out_dir = 'out-gpt2-fineweb-muon'
dataset = 'fineweb10B'

# the same batch as the speedrun and train_gpt2_fineweb.py: 16 * 1024 * 4 * 8 = 524,288 tokens per iteration
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8

optimizer = 'muon'
muon_lr = 0.02
muon_momentum = 0.95
muon_weight_decay = 0.0
learning_rate = 0.0036  # AdamW: the embeddings (and here also biases and LayerNorm gains)
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95

# the speedrun: no warmup, constant, then a linear decay to 0 over the last 1450; here nanoGPT's cosine to 0
max_iters = 5100
lr_decay_iters = 5100
warmup_iters = 0
min_lr = 0.0

eval_interval = 250
eval_iters = 200
log_interval = 10
eval_hellaswag = True  # zero-shot HellaSwag at each eval (10,042 examples, shared by the 8 GPUs)

wandb_log = False  # --wandb_log=True to log to Weights & Biases (pip install wandb)
wandb_project = 'fineweb10B'
wandb_run_name = 'gpt2-124M-muon'
