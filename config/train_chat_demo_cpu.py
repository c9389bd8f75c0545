# a chat model from scratch on a laptop CPU: data/chat_demo's conversations (sums and reversed words), trained on
# the assistant's tokens only (the dataset's loss mask)
# $ python data/chat_demo/prepare.py  (train.py runs it itself when the data is missing)
# $ python train.py config/train_chat_demo_cpu.py
# $ python chat.py --out_dir=out-chat-demo

out_dir = 'out-chat-demo'
eval_interval = 250
eval_iters = 20
log_interval = 25
always_save_checkpoint = False

dataset = 'chat_demo'
gradient_accumulation_steps = 1
batch_size = 32
block_size = 256

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

optimizer = 'muon'
muon_lr = 0.03
learning_rate = 3e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
