# the val loss of OpenAI's gpt2 (124M parameters; n_layer=12, n_head=12, n_embd=768) on OpenWebText;
# expect about 3.12. Needs data/openwebtext prepared.
# $ python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # 500 batches of 8 x 1024 tokens: about 4M tokens, for a steady estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
