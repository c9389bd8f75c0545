# a small GPT-2 BPE model trained from scratch on Tiny Shakespeare, sized for a laptop CPU
# $ python train.py config/train_shakespeare_cpu.py
# Without this file, train.py's defaults are GPT-2's run on 8 GPUs (40 micro-steps, 200 eval batches,
# 2,000 warmup iterations): every one of those is set here for a small CPU run.

out_dir = 'out-shakespeare-cpu'
eval_interval = 100
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare'
gradient_accumulation_steps = 1
batch_size = 8
block_size = 64

# 7.2M parameters, 6.4M of them the 50,304 x 128 token embeddings (GPT-2's vocabulary, padded)
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 1000
lr_decay_iters = 1000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False
