"""A tiny Llama written as a GGUF file the way llama.cpp's converter writes one, for tests that need no download."""

from __future__ import annotations

import json
from pathlib import Path

# SmolLM2's kind of chat template: ChatML, a default system prompt injected when the chat has none, and no
# `{% generation %}` markers.
CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONTROL, NORMAL = 3, 1  # llama.cpp token types


def permute_for_gguf(weight, heads: int):
    """llama.cpp's reordering of q/k rows (rotary halves interleaved), which transformers undoes when loading."""
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, chat_template: str = CHATML_WITH_DEFAULT_SYSTEM, seed: int = 0):
    """Write a random tiny Llama and its byte-level BPE tokenizer to `path` (float32 tensors); returns the model."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.tiny import build_config, build_tokenizer

    tokenizer = build_tokenizer(vocab_size=300)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    config = build_config("llama", len(tokenizer), hidden=32, layers=2, heads=4, special_ids=ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    writer.add_token_list(vocab)
    writer.add_token_types([CONTROL if i in tokenizer.all_special_ids else NORMAL for i in range(len(vocab))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(ids["bos_token_id"])
    writer.add_eos_token_id(ids["eos_token_id"])
    writer.add_pad_token_id(ids["pad_token_id"])
    writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        array = tensor.numpy()
        if module.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if module.endswith("q_proj") else config.num_key_value_heads
            array = permute_for_gguf(array, heads)
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
