"""docs/guide/prepare.md, "3-bert (Mandarin)": one line's BERT features (a chinese-roberta-wwm-ext-large
folder of the real layout, made here with random weights, 3 layers and a 6-token vocabulary)."""

import json

import torch
from _setup import workdir
from safetensors.torch import save_file

workdir()
from gsv_ray.models.bert import Bert, BertConfig

torch.manual_seed(0)
folder = "GPT_SoVITS/pretrained_models/chinese-roberta-wwm-ext-large"
__import__("os").makedirs(folder)
cfg = {"model_type": "bert", "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096}
cfg.update(num_hidden_layers=3, vocab_size=7)
json.dump(cfg, open(f"{folder}/config.json", "w"))
weights = Bert(BertConfig(**{k: v for k, v in cfg.items() if k != "model_type"})).state_dict()
save_file({f"bert.{k}": v.half() for k, v in weights.items()}, f"{folder}/model.safetensors")
open(f"{folder}/vocab.txt", "w").write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n你\n好\n")

# __doc_start__
from gsv_ray.prepare.bert import bert_features, load_bert, write_bert

bert, tokenizer = load_bert("GPT_SoVITS/pretrained_models/chinese-roberta-wwm-ext-large")  # half=True: is_half
# one zh line's norm_text and word2ph (2-name2text.txt's 4th and 3rd fields): 2 phones per character, 1 per mark
feats = bert_features("你好.", [2, 2, 1], bert, tokenizer)  # [1024, 5]: one column per phone
write_bert("logs/myvoice/3-bert/a.wav.pt", feats)
# __doc_end__

back = torch.load("logs/myvoice/3-bert/a.wav.pt", weights_only=True)
assert back.shape == (1024, 5) and back.dtype == torch.float32, back.shape
print("ok", tuple(back.shape))
