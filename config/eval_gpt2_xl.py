# the val loss of OpenAI's gpt2-xl (1558M parameters; n_layer=48, n_head=25, n_embd=1600) on OpenWebText;
# expect about 2.54. Needs data/openwebtext prepared.
# $ python train.py config/eval_gpt2_xl.py
batch_size = 8
eval_iters = 500  # 500 batches of 8 x 1024 tokens: about 4M tokens, for a steady estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
