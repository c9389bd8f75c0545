# train GPT-2 (124M) from scratch on OpenWebText, on one node of 8 GPUs:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# per nanoGPT's README: about 4 days on 8 A100 40GB to a val loss near 2.85 (OpenAI's gpt2: 3.12)

# 12 sequences of 1024 tokens per micro-step, 5 micro-steps on each of 8 GPUs:
# 12 * 1024 * 40 = 491,520 tokens per iteration, about the 0.5M of the GPT-3 paper's small models
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600,000 iterations of 491,520 tokens: about 300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1

wandb_log = False  # --wandb_log=True to log to Weights & Biases (pip install wandb)
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'
