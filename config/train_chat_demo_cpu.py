# a chat model from scratch on a laptop CPU: data/chat_demo's conversations (sums of two numbers, reversed words,
# small talk), trained on the assistant's tokens only (the dataset's loss mask); measured in docs/chat.md
# $ python train.py config/train_chat_demo_cpu.py      (runs data/chat_demo/prepare.py first when the data is missing)
# $ python chat.py --out_dir=out-chat-demo
# $ python data/chat_demo/eval.py --out_dir=out-chat-demo

out_dir = 'out-chat-demo'
eval_interval = 500
eval_iters = 10
log_interval = 50
always_save_checkpoint = False

dataset = 'chat_demo'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 256  # 93% of the demo's conversations fit it; the others are cut after their last reply that fits

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

# Muon for the matrices inside the blocks, AdamW for the embeddings and gains (config/train_shakespeare_char_cpu.py)
optimizer = 'muon'
muon_lr = 0.03
learning_rate = 3e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False
