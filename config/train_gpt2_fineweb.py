# train GPT-2 (124M) from scratch on FineWeb10B (python data/fineweb10B/prepare.py), on one node of 8 GPUs:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py
# one pass over ~10B tokens: about 3-4 hours on 8 A100s at nanoGPT's speed, to a FineWeb val loss near 3.28
# (llm.c's 124M reaches 3.2847 on 10B tokens, per the modded-nanogpt README)

out_dir = 'out-gpt2-fineweb'
dataset = 'fineweb10B'

# 16 sequences of 1024 tokens per micro-step, 4 micro-steps on each of 8 GPUs:
# 16 * 1024 * 32 = 524,288 = 2**19 tokens per iteration, the GPT-3 paper's 0.5M for its small models.
# Out of GPU memory? Halve batch_size and double gradient_accumulation_steps: the same run, a bit slower.
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8

# 10B tokens / 524,288 = 19,073 iterations: about one pass over the data. The GPT-3 paper warms up
# over 375M tokens (715 iterations) and decays the learning rate to 10% of its peak.
max_iters = 19073
lr_decay_iters = 19073
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 1e-1

eval_interval = 500
eval_iters = 200
log_interval = 10
eval_hellaswag = True  # zero-shot HellaSwag at each eval (10,042 examples, shared by the 8 GPUs)

wandb_log = False  # --wandb_log=True to log to Weights & Biases (pip install wandb)
wandb_project = 'fineweb10B'
wandb_run_name = 'gpt2-124M'
