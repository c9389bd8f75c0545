# SFT of GPT-2 (124M) on conversations, with LoRA: the adapters train, and the token embedding, whose rows for the
# chat tokens are new (GPT-2 has 50,257 tokens; the chat tokens take 50,257.. of the padding up to 50,304, starting
# at the mean embedding); every other weight stays GPT-2's. E.g. on a few hundred of the chat demo's conversations:
# $ python data/chat_demo/prepare.py
# $ head -n 500 data/chat_demo/chats.jsonl > chats500.jsonl
# $ python data/prepare_text.py --format=chat --input=chats500.jsonl --dataset=chat_gpt2 --tokenizer=gpt2 --block_size=256
# $ python train.py config/finetune_chat_gpt2.py
# $ python chat.py --out_dir=out-chat-gpt2

out_dir = 'out-chat-gpt2'
eval_interval = 50
eval_iters = 20
log_interval = 5
always_save_checkpoint = False

init_from = 'gpt2'
dataset = 'chat_gpt2'
batch_size = 4
gradient_accumulation_steps = 4
block_size = 256  # cropped from GPT-2's 1024: the conversations fit

lora_rank = 16
lora_alpha = 32.0
lora_targets = 'c_attn,c_proj,c_fc'

learning_rate = 3e-4  # the adapters and the embedding; finetuning takes a small, constant-ish rate
max_iters = 200
lr_decay_iters = 200
warmup_iters = 10
min_lr = 3e-5
weight_decay = 0.0
