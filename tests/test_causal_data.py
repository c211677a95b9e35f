"""Causal-LM data: exact label masks for prompt/completion and chat, EOS at the end of every target, truncation
and all-masked examples counted, and packing equivalent to unpacked training."""
from __future__ import annotations

import pytest
import torch

from tuneforge.data.causal import (IGNORE, CausalExample, encode_causal, pack, tokenize_chat,
                                   tokenize_prompt_completion, tokenize_text)
from tuneforge.errors import DataError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ["user", "assistant", "system", "hi", "there", "hello", "how", "are", "you", "fine", "thanks", "be", "brief",
         "one", "two", "three", "four", "five"]


def make_tokenizer(chat_template: str | None = CHATML):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "<eos>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="<|im_end|>" if chat_template else "<eos>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def ids(tok, *words):
    return tok.convert_tokens_to_ids(list(words))


def test_chat_labels_cover_exactly_the_assistant_turns_and_their_end(tok):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"},
                {"role": "assistant", "content": "fine thanks"}]
    row = tokenize_chat(tok, messages, "chat.jsonl line 1")
    assert tok.convert_ids_to_tokens(row.input_ids) == [
        "<|im_start|>", "system", "be", "brief", "<|im_end|>", "<|im_start|>", "user", "hi", "there", "<|im_end|>",
        "<|im_start|>", "assistant", "hello", "<|im_end|>", "<|im_start|>", "user", "how", "are", "you", "<|im_end|>",
        "<|im_start|>", "assistant", "fine", "thanks", "<|im_end|>"]
    masked = [i for i, label in enumerate(row.labels) if label != IGNORE]
    assert masked == [12, 13, 22, 23, 24]  # 'hello' <|im_end|>, 'fine' 'thanks' <|im_end|>
    assert all(row.labels[i] == row.input_ids[i] for i in masked)
    last = tokenize_chat(tok, messages, "x", train_on="last")
    assert [i for i, label in enumerate(last.labels) if label != IGNORE] == [22, 23, 24]


def test_prompt_completion_with_a_chat_template_is_one_user_and_one_assistant_turn(tok):
    split = encode_causal(tok, [CausalExample(prompt="hi there", completion="hello", source="r1")], 64)
    row = split.rows[0]
    assert tok.convert_ids_to_tokens([t for t in row.labels if t != IGNORE]) == ["hello", "<|im_end|>"]


def test_prompt_completion_without_a_template_ends_with_eos():
    plain = make_tokenizer(chat_template=None)
    row = tokenize_prompt_completion(plain, "how are you", "fine thanks", "r1")
    assert plain.convert_ids_to_tokens(row.input_ids) == ["how", "are", "you", "fine", "thanks", "<eos>"]
    assert row.labels == [IGNORE] * 3 + ids(plain, "fine", "thanks", "<eos>")
    text = tokenize_text(plain, "one two", "t1")
    assert text.labels == text.input_ids == ids(plain, "one", "two", "<eos>")


def test_truncation_is_counted_and_examples_without_targets_are_dropped(tok):
    examples = [CausalExample(prompt="hi there", completion="hello", source="row 1"),                 # 9 tokens: fits
                CausalExample(prompt="one two three four five one two", completion="fine", source="row 2"),
                CausalExample(prompt="hi", completion="one two three four five", source="row 3")]
    split = encode_causal(tok, examples, max_length=9)
    assert split.truncated == 2
    assert split.dropped == ["row 2"]  # its completion was cut off entirely: no silent zero-loss row
    assert [r.source for r in split.rows] == ["row 1", "row 3"]
    assert all(len(r.input_ids) == 9 for r in split.rows)
    assert tok.convert_ids_to_tokens([t for t in split.rows[0].labels if t != IGNORE]) == ["hello", "<|im_end|>"]
    assert tok.convert_ids_to_tokens([t for t in split.rows[1].labels if t != IGNORE]) == ["one", "two", "three"]


def test_a_template_that_rewrites_earlier_turns_is_refused():
    rewriting = make_tokenizer("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endif %}{% endfor %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(DataError, match="chat.jsonl line 3: the chat template does not render"):
        tokenize_chat(rewriting, messages, "chat.jsonl line 3")


def test_packing_gives_the_loss_of_unpacked_training(tok):
    """Packed rows with restarting position ids and no attention mask: each example attends only to itself,
    so the summed loss over targets equals the unpacked one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=tok.pad_token_id)).eval()
    examples = [CausalExample(prompt="hi there", completion="hello", source="a"),
                CausalExample(prompt="how are you", completion="fine thanks", source="b"),
                CausalExample(prompt="one", completion="two three four five", source="c")]
    rows = encode_causal(tok, examples, 64).rows

    def summed_loss(input_ids, labels, **kw):
        # use_cache=False: with a key/value cache transformers does not look for packed sequences.
        logits = model(input_ids=torch.tensor([input_ids]), use_cache=False, **kw).logits[0]
        return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE,
                                                 reduction="sum")

    with torch.no_grad():
        unpacked = sum(summed_loss(r.input_ids, r.labels) for r in rows)
        packed_rows = pack(rows, max_length=64)
        assert len(packed_rows) == 1 and packed_rows[0]["position_ids"][:10] == [*range(9), 0]
        packed = sum(summed_loss(p["input_ids"], p["labels"], position_ids=torch.tensor([p["position_ids"]]))
                     for p in packed_rows)
        # The same tokens without restarting positions attend across examples: a different loss.
        leaky = sum(summed_loss(p["input_ids"], p["labels"]) for p in packed_rows)
    assert packed == pytest.approx(float(unpacked), rel=1e-5)
    assert abs(float(leaky) - float(unpacked)) > 1e-3
    assert sum(t != IGNORE for p in packed_rows for t in p["labels"]) == sum(r.targets for r in rows)


def test_pack_starts_a_new_row_when_the_next_example_does_not_fit(tok):
    rows = encode_causal(tok, [CausalExample(text="one two three", source=str(i)) for i in range(5)], 64).rows
    packed = pack(rows, max_length=9)  # 4 tokens each (with EOS): two per row
    assert [len(p["input_ids"]) for p in packed] == [8, 8, 4]
    assert packed[0]["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 3]


GEMMA_LIKE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
              "supported') }}{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
DEFAULT_SYSTEM = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nbe brief<|im_end|>\n{% endif %}" + CHATML)
NO_END = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def gemma_like_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["model", ":"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                  eos_token="<eos>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    tok.chat_template = GEMMA_LIKE
    return tok


def test_a_template_with_its_own_end_of_turn_token_trains_and_stops_on_it():
    from tuneforge.data.causal import end_of_turn_id, stop_ids

    tok = gemma_like_tokenizer()
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn_id(tok) == eot and set(stop_ids(tok)) == {eot, tok.eos_token_id}
    row = tokenize_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "r")
    assert tok.convert_ids_to_tokens([t for t in row.labels if t != IGNORE]) == ["hello", "<end_of_turn>"]
    with pytest.raises(DataError, match="r7: the tokenizer's chat template refused this conversation: System role"):
        tokenize_chat(tok, [{"role": "system", "content": "be"}, {"role": "assistant", "content": "hi"}], "r7")


def test_a_template_without_an_end_marker_gets_eos_after_each_trained_turn():
    tok = make_tokenizer(NO_END)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how"}, {"role": "assistant", "content": "fine"}]
    row = tokenize_chat(tok, messages, "r")
    labelled = tok.convert_ids_to_tokens([t for t in row.labels if t != IGNORE])
    assert labelled == ["hello", "<|im_end|>", "fine", "<|im_end|>"]  # EOS of this tokenizer is <|im_end|>


def test_a_default_system_prompt_never_gets_loss():
    tok = make_tokenizer(DEFAULT_SYSTEM)
    row = tokenize_chat(tok, [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "fine"}], "r")
    assert tok.convert_ids_to_tokens(row.input_ids)[:5] == ["<|im_start|>", "system", "be", "brief", "<|im_end|>"]
    assert tok.convert_ids_to_tokens([t for t in row.labels if t != IGNORE]) == ["hello", "<|im_end|>", "fine", "<|im_end|>"]


def test_train_on_all_covers_the_prompt_too(tok):
    row = encode_causal(tok, [CausalExample(prompt="hi there", completion="hello", source="r")], 64, train_on="all").rows[0]
    assert row.labels == row.input_ids
    plain = make_tokenizer(chat_template=None)
    row = tokenize_prompt_completion(plain, "how are you", "fine", "r", train_on="all")
    assert row.labels == row.input_ids


def test_packed_batches_with_padding_give_the_unpacked_loss(tok):
    """Through CausalLMSplit.batch: two packed rows of different lengths in one batch (the shorter padded, its
    padding a segment of its own) against the unpacked split, by summed loss and target count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.data.collate import encode_causal_split
    from tuneforge.engine.evaluate import model_inputs
    from tuneforge.tasks import get_task

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=tok.pad_token_id)).eval()
    examples = [CausalExample(prompt=p, completion=c, source=str(i)) for i, (p, c) in
                enumerate([("hi there", "hello"), ("how are you", "fine thanks"), ("one", "two three four five"),
                           ("two", "three"), ("five four", "one")])]
    task = get_task("causal-lm")

    def total(split):
        with torch.no_grad():
            batch = split.batch(list(range(len(split))), tok.pad_token_id)
            return float(task.loss_sum(model(**model_inputs(batch)).logits, batch["labels"])), split.count(range(len(split)))

    unpacked = encode_causal_split(tok, examples, 24)
    packed = encode_causal_split(tok, examples, 24, packing=True)
    assert len(unpacked) == 5 and len(packed) == 3 and len(set(packed.lengths)) > 1
    (a, n_a), (b, n_b) = total(unpacked), total(packed)
    assert n_a == n_b and b == pytest.approx(a, rel=1e-5)
