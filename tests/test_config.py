"""Config loading: YAML + dotted overrides, and one-line errors that name the key."""

from __future__ import annotations

import pytest

from declora.cli import main
from declora.config import Config, ConfigError, builtin_configs, load_config, parse_overrides

SITES = ["data.path=s/site_{node}.csv", "data.labels=[negative,positive]"]  # per-site files


def test_defaults_are_the_built_in_job():
    cfg = load_config()
    assert cfg.topology.kind == "base" and cfg.topology.degree == 1 and cfg.nodes == 8
    assert cfg.partition.kind == "dirichlet" and cfg.partition.alpha == 0.5
    assert cfg.methods == ["dec-lora", "centralized", "local"]
    assert cfg.model.name == "bundled:minilm" and cfg.data.path == "bundled:rotten_tomatoes"


def test_overrides_are_dotted_and_parsed_as_yaml():
    cfg = load_config(
        None, ["lora.rank=4", "lr=3e-4", "methods=[dec-lora, fedavg]", "topology.kind=grid"]
    )
    assert cfg.lora.rank == 4 and cfg.lr == 3e-4
    assert cfg.methods == ["dec-lora", "fedavg"] and cfg.topology.kind == "grid"
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# declora run c.yaml\nnodes: 3\nlora:\n  rank: 2\n")
    cfg = load_config(str(path), ["nodes=5"])
    assert cfg.nodes == 5 and cfg.lora.rank == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["nodes=0"], "nodes: Input should be greater than or equal to 1"),
        (["lora.rank=-1"], "lora.rank"),
        (["lr=fast"], "lr: Input should be a valid number"),
        (["rounds=2.5"], "rounds"),
        (["optimizer=adam"], "optimizer: Input should be 'adamw' or 'sgd'"),
        (["methods=[dec-lora, magic]"], "methods"),
        (["methods=[]"], "methods"),
        (["methods=[local, local]"], "each method may appear once"),
        (["topology.kind=hypercube"], "topology.kind"),
        (["topology.p=1.5"], "topology.p"),
        (["topology.kind=custom"], "topology.edges is required"),
        (["partition.kind=label_skew"], "partition.proportions is required"),
        (["partition.alpha=0"], "partition.alpha"),
        (["lora.dropout=1"], "lora.dropout"),
        (["colour=blue"], "unknown config key 'colour'"),
        (["lora.colour=blue"], "unknown config key 'lora.colour'"),
        (["lora=4"], "lora"),
        (["nodes"], "key=value"),
        (["=3"], "key=value"),
        (["nodes=true"], "nodes: Input should be a valid integer (got True)"),
        (["local_steps=2.0"], "local_steps: Input should be a valid integer"),
        (["lr=.inf"], "lr: Input should be a finite number"),
        (["lr=.nan"], "lr: Input should be a finite number"),
        (
            ["per_method={centralized: {lr: .nan}}"],
            "per_method.centralized.lr: Input should be a finite",
        ),
        (["peer_timeout=.inf"], "peer_timeout: Input should be a finite number"),
        (["lora.alpha=.inf"], "lora.alpha"),
        (["compression.block=4294967296"], "compression.block"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["seed=100000000000000000000000"], "seed: Input should be less than or equal to"),
        (["data.split_seed=-1"], "data.split_seed"),
        (["data.label_column=text"], "data.text_column and data.label_column are both 'text'"),
        (["methods=[fedavg]", "compression.kind=quantize"], "fedavg with compression"),
        (["seeds=[0, 0]"], "each seed may appear once"),
        (["seeds=[]"], "seeds"),
        (["seeds=[-1]"], "seeds"),
        (["finish_rounds=-1"], "finish_rounds"),
        (["per_method.dec-lora.subrounds=3"], "per_method.dec-lora.subrounds=3 must divide"),
        (["subrounds=0"], "subrounds"),
        (
            ["per_method={dec-lora: {momentum: 0.9}}"],
            "unknown config key 'per_method.dec-lora.momentum'",
        ),
        (["per_method={magic: {lr: 0.1}}"], "per_method"),
        (["data.val_size=0"], "data.val_size"),
        (["data.eval_rows=100"], "unknown config key 'data.eval_rows'"),
        (["tune.trials=0"], "tune.trials"),
        # issue 25: hostile values that were accepted, or refused without a useful line
        (["peer_timeout=1e300"], "peer_timeout: Input should be less than or equal to 86400"),
        (["lr=true"], "lr: expected a number, got a boolean (true)"),
        (["privacy.clip=true"], "privacy.clip: expected a number, got a boolean"),
        (["peer_timeout=true"], "peer_timeout: expected a number, got a boolean"),
        (["data.eval_size=true"], "data.eval_size: expected a number, got a boolean"),
        (["per_method={local: {lr: false}}"], "per_method.local.lr: expected a number"),
        (["privacy.clip=1e300"], "privacy.clip: Input should be less than or equal to 1000000"),
        ([*SITES, "data.labels=[negative,negative,positive]"], "'negative' is given twice"),
        ([*SITES, "data.labels=['1','1.0']"], "'1.0' is the class '1' again"),
        ([*SITES, "data.labels=['caf\u00e9','cafe\u0301']"], "is the class 'caf\u00e9' again"),
        ([*SITES, "data.labels=[NaN,positive]"], "data.labels: 'NaN' means no label"),
        ([*SITES, "data.labels=[positive,inf]"], "data.labels: 'inf' means no label"),
        ([*SITES, "data.labels=['',positive]"], "data.labels: '' means no label"),
        ([*SITES, "data.labels=[yes,no]"], "quote them"),
        (["data.labels=[negative,positive]"], "data.labels applies to per-site files"),
        (["data.eval_size=0.3"], "data.eval_size applies to per-site files"),
        (["data.path=s/site_{node:03d}.csv"], "only {node} is expanded"),
        ([*SITES, "data.eval_size=1e300"], "data.eval_size=1e+300: a fraction"),
    ],
)
def test_bad_config_is_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text and len(text) < 300


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("nodes: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("lora:\n  ranks: 4\n", "unknown config key 'lora.ranks'"),
        ("nodes: 4\nrounds: 2\nnodes: 5\n", "line 3: key 'nodes' given twice"),
        ("lora:\n  rank: 4\n  rank: 8\n", "line 3: key 'rank' given twice"),
    ],
)
def test_bad_config_file(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_missing_config_file_names_it():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("nope.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nodes=-2"], "nodes"),
        (["run", "does-not-exist"], "neither a file nor a built-in config"),
        (["run", "topology.kind=grid", "nodes=7"], "grid"),
        (["run", "topology.kind=custom", "topology.edges=[[0,1],[2,3]]", "nodes=4"], "topology"),
        (["run", "topology.kind=erdos_renyi", "topology.p=0.01", "nodes=30"], "topology.p"),
        (["estimate", "--num-labels", "0"], "--num-labels 0: a task has at least 2 classes"),
        (["run", "security.key_file=/nonexistent/key"], "security.key_file"),
    ],
)
def test_cli_exit_code_2_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main([*args, f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("declora: error:")
    assert not out.exists()


def test_every_builtin_config_loads():
    names = builtin_configs()
    assert "default" in names
    for name in names:
        assert isinstance(load_config(name), Config)


def test_configs_command_lists_them(capsys):
    assert main(["configs"]) == 0
    assert "default" in capsys.readouterr().out
    assert main(["configs", "--fields"]) == 0
    assert "lora.rank" in capsys.readouterr().out


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("# caf\u00e9\nnodes: 4\n".encode("cp1252"))
    with pytest.raises(ConfigError, match="latin.yaml: not UTF-8 text"):
        load_config(str(path))


@pytest.mark.parametrize("kind", ["file", "uncreatable"])
def test_an_output_path_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, kind):
    """The model loads first (a tiny config would take seconds): check the folder alone."""
    from declora.harness.outputs import make_out_dir

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if kind == "file" else blocker / "sub"
    message = "is a file, not a folder" if kind == "file" else "cannot create the folder"
    with pytest.raises(ConfigError, match=message):
        make_out_dir(load_config(None, [f"out={out}"]))


def test_a_method_takes_its_own_values_and_the_rest_from_the_top():
    cfg = load_config(
        None,
        [
            "lr=0.01",
            "per_method={centralized: {lr: 0.002, schedule: cosine}, dec-lora: {finish_rounds: 7}}",
        ],
    )
    central, dec, local = (cfg.for_method(m) for m in ("centralized", "dec-lora", "local"))
    assert (central.lr, central.schedule, central.finish_rounds) == (0.002, "cosine", 0)
    assert (dec.lr, dec.schedule, dec.finish_rounds) == (0.01, "constant", 7)
    assert local == cfg  # no values of its own


def test_a_dotted_per_method_override_changes_one_value_and_keeps_the_others():
    built_in = load_config(None).per_method
    cfg = load_config(None, ["per_method.dec-lora.gossip_steps=8"])
    assert cfg.per_method["dec-lora"] == built_in["dec-lora"].model_copy(update={"gossip_steps": 8})
    assert {m: cfg.per_method[m] for m in ("centralized", "local")} == {
        m: built_in[m] for m in ("centralized", "local")
    }
    from_file = load_config("default", ["per_method.local.lr=0.5"]).per_method
    assert from_file["local"].lr == 0.5 and from_file["dec-lora"] == built_in["dec-lora"]
    assert load_config(None, ["per_method={}"]).per_method == {}
    assert load_config("default", ["per_method={}"]).per_method == {}


def test_the_default_yaml_is_the_built_in_default():
    """configs/default.yaml documents the built-in job: it must hold the same values."""
    assert load_config("default") == load_config(None)


def test_the_tiny_pilot_takes_the_built_in_per_method():
    assert load_config("tiny").per_method == load_config(None).per_method


def test_the_agree_config_is_the_default_with_more_rounds_and_gossip():
    """configs/agree.yaml is the budget measured on the ring: only these values differ from the
    built-in job on the ring with equal weights and each node's own moments."""
    built_in = load_config(None, ["topology.kind=ring", "weighting=uniform", "second_moment=own"])
    agree = load_config("agree")
    dec = built_in.per_method["dec-lora"].model_copy(
        # measured before the built-in dec-lora took 2 subrounds and 8-bit messages
        update={
            "finish_rounds": 0,
            "gossip_steps": 8,
            "lr": 0.008,
            "subrounds": None,
            "compression": None,
        }
    )
    assert agree.per_method == {**built_in.per_method, "dec-lora": dec}
    assert (agree.rounds, agree.methods) == (140, ["dec-lora", "centralized"])
    same = {"rounds", "methods", "per_method"}
    assert agree.model_dump(exclude=same) == built_in.model_dump(exclude=same)


def test_numbers_in_data_labels_are_the_labels_text():
    cfg = load_config(None, ["data.path=s/site_{node}.csv", "data.labels=[0, 1, 2.5]"])
    assert cfg.data.labels == ["0", "1", "2.5"]


# issue 25: a value the user gives at the top level wins over the per-method values of the
# layers below it (the built-in ones, then the config file's); a per-method value given in the
# same layer or above wins over it
OWN = "per_method: {dec-lora: {lr: 0.2}}\n"  # a file that gives dec-lora's own lr
PER_METHOD_RULE = [
    # (config file text or None, overrides, method, key, value)
    (None, ["lr=0.5"], "dec-lora", "lr", 0.5),
    (None, ["lr=0.5"], "centralized", "lr", 0.5),
    (None, ["schedule=linear"], "local", "schedule", "linear"),
    (None, ["head_lr_scale=2"], "dec-lora", "head_lr_scale", 2.0),
    (None, ["gossip_steps=4"], "dec-lora", "gossip_steps", 4),
    (None, ["finish_rounds=3"], "dec-lora", "finish_rounds", 3),
    (None, ["lr=0.5", "per_method.dec-lora.lr=0.2"], "dec-lora", "lr", 0.2),
    (None, ["lr=0.5", "per_method.dec-lora.lr=0.2"], "centralized", "lr", 0.5),
    (None, ["rounds=3"], "dec-lora", "lr", 0.0078515),  # nothing given: the built-in value
    ("lr: 0.5\n", [], "dec-lora", "lr", 0.5),
    ("lr: 0.5\nper_method: {dec-lora: {lr: 0.2}}\n", [], "dec-lora", "lr", 0.2),
    ("lr: 0.5\nper_method: {dec-lora: {lr: 0.2}}\n", [], "local", "lr", 0.5),
    (OWN, ["lr=0.7"], "dec-lora", "lr", 0.7),
    (OWN, ["lr=0.7", "per_method.dec-lora.lr=0.3"], "dec-lora", "lr", 0.3),
    ("tiny", ["lr=1e30"], "dec-lora", "lr", 1e30),  # a built-in config is a file too
]


@pytest.mark.parametrize(("text", "overrides", "method", "key", "value"), PER_METHOD_RULE)
def test_a_top_level_value_the_user_gives_acts(tmp_path, text, overrides, method, key, value):
    path = text
    if text is not None and text != "tiny":
        path = tmp_path / "c.yaml"
        path.write_text(text)
    cfg = load_config(None if path is None else str(path), overrides)
    assert getattr(cfg.for_method(method), key) == value


def test_a_saved_config_loads_back_the_same(tmp_path):
    """config.yaml holds every key: its per_method values stay what the run used."""
    from declora.config import dump_config

    cfg = load_config(None, ["lr=0.5", "per_method.dec-lora.gossip_steps=4"])
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_the_opening_lines_give_each_methods_own_values():
    from declora.harness.outputs import describe_methods

    args = ["lr=0.5", "per_method.dec-lora.gossip_steps=4", "finish_rounds=2"]
    lines = describe_methods(load_config(None, [*args, "topology.kind=ring"]))
    assert lines == [
        "dec-lora: lr 0.5 (head x1.04053), cosine schedule; 4 gossip steps a round, "
        "2 gossip-only rounds at the end",
        "centralized: lr 0.5 (head x8.65294), cosine schedule",
        "local: lr 0.5 (head x1.08076), constant schedule",
    ]
    # the built-in Base-2: 4 of its matrices a round end every round at the exact average
    plain = ["compression.kind=none", "subrounds=1"]  # the built-in's 8-bit messages: never exact
    assert describe_methods(load_config(None, [*plain, *args]))[0].endswith(
        "4 gossip steps a round, no gossip-only rounds (of 2: every round ends at the exact "
        "average) at the end"
    )


def test_a_method_plays_its_own_subrounds_and_sends_its_own_compression():
    """The built-in dec-lora: 140 rounds of 8 rows in 8-bit messages, beside centralized's 70
    of 16; applied once (a method's config asked again keeps them); a top-level value the
    user gives replaces them; fedavg beside it sends full precision, so it is accepted."""
    cfg = load_config(None)
    dec, central = cfg.for_method("dec-lora"), cfg.for_method("centralized")
    assert (dec.rounds, dec.batch_size, dec.eval_every) == (140, 8, 48)
    assert (dec.compression.kind, dec.compression.bits, cfg.sent().kind) == (
        "quantize",
        8,
        "quantize",
    )
    assert dec.for_method("dec-lora").rounds == 140
    assert (central.rounds, central.batch_size, central.compression.kind) == (70, 16, "none")
    both = load_config(None, ["methods=[dec-lora,fedavg]"])
    assert both.for_method("fedavg").compression.kind == "none"
    plain = load_config(None, ["compression.kind=none", "subrounds=1"]).for_method("dec-lora")
    assert (plain.rounds, plain.batch_size, plain.compression.kind) == (70, 16, "none")


@pytest.mark.parametrize(
    "overrides, kind, bits",
    [
        (["compression.bits=4"], "quantize", 4),  # it kept 8-bit quantize's kind: 4-bit
        (["compression.kind=topk"], "topk", 8),
        (["compression.kind=none"], "none", 8),
        (["per_method.dec-lora.compression.bits=2", "compression.bits=4"], "quantize", 2),
    ],
)
def test_a_top_level_compression_value_changes_only_what_it_gives(overrides, kind, bits):
    """``compression.bits=4`` on the default job means 4-bit messages, not float32 (the
    top-level section once replaced dec-lora's whole 8-bit quantize); a method's own value
    given beside it still wins."""
    sent = load_config(None, overrides).sent()
    assert (sent.kind, sent.bits) == (kind, bits)
