# finetune GPT-2 XL (1558M) on Tiny Shakespeare in BPE tokens; prepare the data first:
# $ python data/shakespeare/prepare.py
# $ python train.py config/finetune_shakespeare.py
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False  # feel free to turn on
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2; gpt2, gpt2-medium or gpt2-large fit smaller GPUs

# the model overfits this small dataset quickly, so keep only the checkpoint with the best val loss
always_save_checkpoint = False

# 1 batch of 1024 tokens per micro-step, 32 micro-steps: 32,768 tokens per iteration.
# Shakespeare has 301,966 training tokens, so 20 iterations are about 2 epochs.
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a small, constant learning rate
learning_rate = 3e-5
decay_lr = False
