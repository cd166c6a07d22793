"""Sentence pairs (``data.text_pair_column``): the tokenizer gets (text, text_pair), the
longer side is cut first, BERT gets its token type ids (also in the stacked batches of
``vectorize=true``), a causal LM's prompt places both sides, survey measures each; bad pair
settings are refused in one line."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from declora.config import load_config
from declora.jobs.survey import format_survey, survey
from declora.learning.adapters import resolve_model_path
from declora.learning.causal_lm import clip_pair
from declora.learning.tasks import TASKS, load_task_data
from declora.learning.vectorize import stack_batches
from tests.helpers import (
    pair_rows,
    records,
    refuses_data,
    run_sim,
    save_tiny_bert,
    tiny_args,
    write_csv,
)

PAIR = "data.text_pair_column=text_pair"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model_path("bundled:minilm"))


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("pairs") / "pairs.csv", pair_rows(240))


def cfg_for(path, *extra):
    args = [f"data.path={path}", PAIR, "data.test_size=20", "data.val_size=20", *extra]
    return load_config(None, args)


def test_bert_gets_both_texts_with_token_types_cut_longest_first(tok, pair_csv):
    train = load_task_data(cfg_for(pair_csv, "max_length=16"), tok).train
    cls, sep = tok.cls_token_id, tok.sep_token_id
    for ids, types in zip(train.input_ids, train.token_types):
        assert ids[0] == cls and ids.count(sep) == 2 and len(ids) <= 16
        first = ids.index(sep) + 1  # [CLS] a [SEP] has type 0, b [SEP] type 1
        assert types == [0] * first + [1] * (len(ids) - first)
    long_ = [ids for ids in train.input_ids if len(ids) == 16]
    assert long_ and all(ids.index(sep) >= 5 for ids in long_)  # the short first side survives
    batch = TASKS["classification"]().collate(train, [0, 1, 2], tok.pad_token_id)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert (batch["token_type_ids"][batch["attention_mask"] == 0] == 0).all()


def test_stacked_batches_pad_token_types_with_zero():
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "token_type_ids": torch.ones(2, 3)}
    b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "token_type_ids": torch.ones(1, 5)}
    out = stack_batches([a, b], pad_id=0)
    assert out["token_type_ids"].tolist()[0] == [1, 1, 1, 0, 0]


def test_a_causal_lm_prompt_cuts_a_pair_as_the_tokenizer_does(tok):
    rng = random.Random(0)
    words = ["the", "movie", "plot", "was", "great", "bad", "dull", "and", "a", "of"]
    for _ in range(200):
        a, b = (" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(2))
        keep = rng.randint(1, 40)
        enc = tok([a], [b], truncation="longest_first", max_length=keep + 3)["token_type_ids"][0]
        cut = clip_pair(tok, a, b, keep)
        got = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in cut]
        assert got == [enc.count(0) - 2, enc.count(1) - 1]  # less [CLS] a [SEP] ... [SEP]


def test_a_causal_lm_prompt_holds_both_sides(tok, pair_csv):
    template = "data.prompt_template=first: {text} second: {text_pair} same?"
    words = "data.label_words=[different,same]"
    cfg = cfg_for(pair_csv, "task=causal_lm", template, words, "data.chat_template=false")
    data = load_task_data(cfg, tok).train
    prompt = tok.decode(data.input_ids[0])
    assert "first :" in prompt and "second :" in prompt and prompt.endswith("same?")


def test_survey_measures_each_side(pair_csv):
    sv = survey(cfg_for(pair_csv, "nodes=2", "partition.kind=iid"))
    node = sv["nodes"][0]
    assert node["pair_words_mean"] > 1.5 * node["words_mean"]  # the second side is longer
    assert " pair " in format_survey(sv).splitlines()[0]


@pytest.mark.slow
def test_a_pair_run_trains_the_same_node_by_node_and_stacked(pair_csv, tmp_path, capsys):
    calm = save_tiny_bert(
        tmp_path / "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    args = [*tiny_args(calm, pair_csv, tmp_path / "x"), PAIR, "methods=[dec-lora]", "rounds=2"]
    args += ["data.test_size=40", "data.val_size=40", "eval_every=2"]
    run_sim([*args, f"out={tmp_path / 'loop'}"])
    assert "token type ids 0 and 1" in capsys.readouterr().out
    run_sim([*args, f"out={tmp_path / 'stacked'}", "vectorize=true"])
    loop, stacked = records(tmp_path / "loop"), records(tmp_path / "stacked")
    for key in ("train_loss", "loss", "accuracy", "node_loss_mean"):
        assert stacked[-1][key] == pytest.approx(loop[-1][key], rel=1e-5, abs=1e-6), key


def _null_pair(tmp):
    rows = pair_rows(40)
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    texts = table.column("text_pair").to_pylist()
    at = table.schema.get_field_index("text_pair")
    table = table.set_column(at, "text_pair", pa.array(texts[:6] + [None] + texts[7:]))
    pq.write_table(table, tmp / "p.parquet")
    return tmp / "p.parquet"


def _list_pair(tmp):
    rows = pair_rows(40)
    table = pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    pq.write_table(
        table.append_column("text_pair", pa.array([[r["text"]] for r in rows])), tmp / "p.parquet"
    )
    return tmp / "p.parquet"


def _csv(tmp):
    return write_csv(tmp / "p.csv", pair_rows(40))


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (_null_pair, [PAIR], "p.parquet: row 7: no text in column 'text_pair' (null)"),
        (_list_pair, [PAIR], "column 'text_pair' (data.text_pair_column) holds list<element: string>, not text"),
        (_csv, ["data.text_pair_column=second"], "column 'second' not found in"),
        (_csv, ["data.text_pair_column=text"], "data.text_pair_column=text is also the text or label column"),
        (_csv, [PAIR, "task=causal_lm", "data.label_words=[different,same]"], "data.prompt_template must place both texts"),
        (_csv, ["data.prompt_template={text} {text_pair}"], "names {text_pair}: set data.text_pair_column"),
        (_csv, [PAIR, "task=causal_lm", "data.prompt_column=text", "data.response_column=label"], "not instruction pairs"),
    ],
)  # fmt: skip
def test_bad_pair_input_is_one_line_and_nothing_is_written(tmp_path, capsys, make, extra, message):
    refuses_data(make(tmp_path), tmp_path, capsys, extra, message)
