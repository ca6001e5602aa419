"""build(cfg): the one place where a config becomes the pieces a run uses.

Every choice is checked here, before data is loaded, anything is compiled or any run is
recorded, so a bad value fails at once with the value, the valid range and the fix.
The input is a plain dict: Hydra's resolved config, or one recorded by an earlier nnx, which
nnx.migrate brings up to date.
"""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from nnx.activations import ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation
from nnx.architectures import MODELS
from nnx.costs import COSTS
from nnx.data import DATASETS, MNIST_SIZES, TRAIN_SIZES
from nnx.initializers import INITIALIZERS
from nnx.migrate import missing
from nnx.model import Net
from nnx.optimizers import OPTIMIZERS
from nnx.probes import KINDS as PROBE_KINDS
from nnx.probes import NEEDS as PROBE_NEEDS
from nnx.registry import ConfigError, check, is_int, is_number, lookup
from nnx.schedules import SCHEDULES, Schedule, injected

SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = MNIST_SIZES["validation"]


@dataclasses.dataclass(frozen=True)
class Probes:
    kinds: tuple[str, ...]  # optional measurements beyond chapter 5's gradients (nnx.probes.KINDS)
    every: int  # epochs between them (always at init and after the last epoch)
    jacobian_every: int  # epochs between Jacobian spectra; 0: at init and after the last epoch only
    jacobian_examples: int  # probe images whose Jacobians are averaged


@dataclasses.dataclass(frozen=True)
class Spec:
    net: Net  # the layers (nnx.model)
    model_name: str  # the architecture: mlp, conv (nnx.architectures)
    sizes: tuple[int, ...] | None  # an MLP's layer sizes; None for other architectures
    activation_name: str
    activation: Callable
    activation_facts: Activation  # the registry entry: range, saturation, monotone (what probes need)
    output_activation: Callable
    cost: Callable  # fn(z, a, y) -> C_x per example
    initializer: Callable
    optimizer: Any  # optax.GradientTransformation; with a schedule, eta lives in its state (nnx.schedules)
    schedule_name: str  # constant (the book's fixed eta), halving, exponential, cosine
    schedule: Schedule  # each epoch's eta (nnx.schedules)
    early_stopping_n: int | None  # stop after n epochs without a better validation accuracy; None: train all epochs
    lmbda: float  # L2 strength, for the reported cost (the optimizer applies it to the updates)
    epochs: int
    mini_batch_size: int
    shuffle: bool  # a fresh shuffle each epoch (network2); false: fixed mini-batches in file order (network3)
    eval_splits: tuple[str, ...]  # the splits evaluated after each epoch (train, validation, test)
    eval_every: int  # epochs between those evaluations (always after the last epoch)
    train_size: int
    probe_size: int
    probes: Probes
    batch_norm: bool
    seed: int
    seeds: tuple[int, ...] | None  # several seeds trained at once (vmapped), or None
    stop_on_divergence: bool
    checkpoint_every: int  # epochs between checkpoints; 0: none
    data_path: str | None
    dataset: Callable  # dataset(data_path, originals) -> nnx.data.Data
    originals: int  # the book's training images used (data.train_size); each gives 5 in the expanded set
    validation_size: int | None  # the first N validation images (the book's broad strategy: 100); None: all
    device: str  # the platform asked for: auto (what JAX finds), cpu, gpu, tpu (nnx.edges.backend)
    matmul_precision: str  # jax.default_matmul_precision while training (highest: true float32 products)
    conv_impl: str  # a conv net's convolution as asked (nnx.choices.conv_impl resolves auto); auto for an MLP
    # The book's fixed eta: the optimizer with eta and the L2 coefficient lmbda / n given at run time
    # (optimizer_at(*hyper), nnx.programs.epoch_fn), so that a sweep over them compiles its epoch once.
    # None with a schedule, whose eta lives in the optimizer's state.
    optimizer_at: Callable | None = None
    hyper: tuple[float, ...] = ()  # (eta, lmbda / n), as Python floats
    structure: str = ""  # the config without the settings no program reads (program_structure); "": unknown

    @property
    def injects_eta(self) -> bool:
        """Whether eta is set per epoch from the host (any schedule but the book's constant)."""
        return self.schedule_name != "constant"

    @property
    def logs_eta(self) -> bool:
        """Whether each epoch records its eta: with a schedule or early stopping, not in the book's plain runs."""
        return self.injects_eta or self.early_stopping_n is not None

    def load_data(self):
        """The training, validation and test sets this spec trains on."""
        data = self.dataset(self.data_path, self.originals, encoded=True)  # nnx.train decodes the pixels on the device
        if self.validation_size is not None:
            data = data._replace(validation=type(data.validation)(*(a[: self.validation_size] for a in data.validation)))
        return data


def _hparams(group: dict, key: str) -> dict:
    """A group's settings besides its name (negative_slope, gain, mu, ...): each a finite number."""
    out = {k: v for k, v in group.items() if k != "name"}
    for name, value in out.items():
        check(is_number(value), f"{key}.{name}", value, "must be a finite number", f"See conf/{key}/{group['name']}.yaml for its default.")
    return out


def _probes(cfg: dict, probe_size: int, batch_norm: bool, activation: str, facts: Activation, model_name: str) -> Probes:
    kinds = cfg["kinds"] or []  # null: none, as []
    check(isinstance(kinds, list) and all(k in PROBE_KINDS for k in kinds), "probes.kinds", kinds,
           f"each kind must be one of {list(PROBE_KINDS)}", "Use e.g. 'probes.kinds=[activations,histograms]' (quoted in a shell), or [] for none.")
    every, jacobian_every, examples = cfg["every"], cfg["jacobian_every"], cfg["jacobian_examples"]
    check(is_int(every) and every >= 1, "probes.every", every, "must be an integer >= 1 (epochs)", "Use e.g. probes.every=1.")
    check(is_int(jacobian_every) and jacobian_every >= 0, "probes.jacobian_every", jacobian_every,
           "must be an integer >= 0 (epochs; 0: at init and at the end only)", "Use e.g. probes.jacobian_every=0.")
    check(is_int(examples) and 1 <= examples <= probe_size, "probes.jacobian_examples", examples,
           f"must be an integer from 1 to the probe batch's size ({probe_size})", "Use e.g. probes.jacobian_examples=8.")
    check(not (batch_norm and "jacobians" in kinds), "probes.kinds", kinds,
           "a batch-normalised layer has no per-image Jacobian (its output depends on the whole batch)",
           "Drop jacobians from probes.kinds, or set model.batch_norm=false.")
    check(model_name == "mlp" or "jacobians" not in kinds, "probes.kinds", kinds,
          f"Jacobian spectra are measured on an MLP's square hidden layers; model={model_name} has none",
          "Drop jacobians from probes.kinds, or use model=mlp.")
    for kind in kinds:
        missing = [fact for fact in PROBE_NEEDS[kind] if getattr(facts, fact) is None]
        check(not missing, "probes.kinds", kinds,
               f"the {kind} probe needs the activation's {' and '.join(missing)}, which activation={activation} does not give",
               f"Give them in its entry in nnx/activations.py (Activation({activation}, {missing[0] if missing else ''}=...)), "
               f"or drop {kind} from probes.kinds.")
    return Probes(tuple(k for k in PROBE_KINDS if k in kinds), every, jacobian_every, examples)


def build(cfg: dict) -> Spec:
    """Validates `cfg` and looks up every registry entry it names.

    Raises:
      ConfigError: naming the bad key and value, what is allowed and how to fix it.
    """
    _complete(cfg)
    model, train, data, opt = cfg["model"], cfg["train"], cfg["data"], cfg["optimizer"]
    model_name = model["name"]
    check(is_int(cfg["seed"]), "seed", cfg["seed"], "the seed must be an integer", "Use e.g. seed=0.")
    check(is_number(opt.get("eta")) and opt["eta"] > 0, "optimizer.eta", opt["eta"], "the learning rate must be a number > 0", "Use e.g. optimizer.eta=0.1.")
    check(is_number(opt["lmbda"]) and opt["lmbda"] >= 0, "optimizer.lmbda", opt["lmbda"], "the L2 strength must be a number >= 0", "Use optimizer.lmbda=0 for none.")
    check(is_int(train["checkpoint_every"]) and train["checkpoint_every"] >= 0, "train.checkpoint_every", train["checkpoint_every"], "must be an integer >= 0", "Use 1 (every epoch) or 0 (no checkpoints).")
    check(is_int(train["epochs"]) and train["epochs"] >= 0, "train.epochs", train["epochs"],
           "must be an integer >= 0 (0: measure the initialization only)", "Use e.g. train.epochs=30.")

    dataset = lookup(DATASETS, "data", data["name"])
    originals = TRAIN_SIZES["mnist"]  # data.train_size counts the book's training images
    check(data["train_size"] is None or (is_int(data["train_size"]) and 1 <= data["train_size"] <= originals), "data.train_size",
          data["train_size"], f"MNIST has {originals} training images", f"Use 1 <= data.train_size <= {originals}.")
    per_image = TRAIN_SIZES[data["name"]] // originals  # 5 for the expanded set: each image and 4 shifts
    train_size = per_image * (originals if data["train_size"] is None else data["train_size"])
    m = train["mini_batch_size"]
    check(is_int(m) and 1 <= m <= train_size, "train.mini_batch_size", m, f"a mini-batch must hold 1 to data.train_size={train_size} images", f"Use train.mini_batch_size<={train_size}, or raise data.train_size.")
    probe_size = cfg["probes"]["size"]
    check(is_int(probe_size) and probe_size >= 1, "probes.size", cfg["probes"]["size"], "the gradient probe needs at least one image", "Use e.g. probes.size=1000 (the book's choice).")

    check(isinstance(train["shuffle"], bool), "train.shuffle", train["shuffle"], "must be true or false",
          "Use train.shuffle=false for network3's fixed mini-batches, true for a fresh shuffle each epoch.")
    splits = train["eval_splits"]
    check(isinstance(splits, list) and splits and set(splits) <= set(SPLITS), "train.eval_splits", splits,
          f"must be a non-empty list of {list(SPLITS)}", "Use e.g. 'train.eval_splits=[validation,test]' (quoted in a shell).")
    eval_every = train["eval_every"]
    check(is_int(eval_every) and eval_every >= 1, "train.eval_every", eval_every, "must be an integer >= 1 (epochs between evaluations)",
          "Use e.g. train.eval_every=1 (every epoch) or 25 (every 25th and the last).")
    act = cfg["activation"]
    facts = lookup(ACTIVATIONS, "activation", act["name"])
    batch_norm = model["batch_norm"] if model_name == "mlp" else False  # conf/model/mlp.yaml's key
    probes = _probes(cfg["probes"], min(probe_size, train_size), batch_norm, act["name"], facts, model_name)

    validation_size = data["validation_size"]
    check(validation_size is None or (is_int(validation_size) and 1 <= validation_size <= VALIDATION_SIZE), "data.validation_size",
          validation_size, f"the validation set has {VALIDATION_SIZE} images", f"Use 1 <= data.validation_size <= {VALIDATION_SIZE}, or null for all.")
    stopping = train["early_stopping_n"]
    check(stopping is None or (is_int(stopping) and stopping >= 1), "train.early_stopping_n", stopping,
          "must be an integer >= 1 (epochs without a better validation accuracy) or null (train every epoch)",
          "Use e.g. train.early_stopping_n=10 (the book's no-improvement-in-ten).")
    sched = cfg["schedule"]
    schedule = lookup(SCHEDULES, "schedule", sched["name"])(opt["eta"], train["epochs"], **_hparams(sched, "schedule"))
    window = sched.get("n") if sched["name"] == "halving" else None
    check(stopping is None or window is None or stopping > window, "train.early_stopping_n", stopping,
          f"with schedule=halving (schedule.n={window}) it would stop the run at the first halving",
          f"Use a longer window, e.g. train.early_stopping_n={5 * (window or 10)} (the book loosens it to 20 or 50), or none.")
    reader = "train.early_stopping_n" if stopping is not None else f"schedule={sched['name']}" if schedule.reads_validation else None
    check(reader is None or "validation" in splits, "train.eval_splits", splits, f"{reader} reads the validation accuracy after each epoch",
          "Add validation to train.eval_splits, e.g. 'train.eval_splits=[validation,test]'.")
    check(reader is None or eval_every == 1, "train.eval_every", eval_every, f"{reader} reads the validation accuracy after each epoch",
          "Use train.eval_every=1 with it.")

    seeds = cfg["seeds"]
    check(seeds is None or (isinstance(seeds, list) and seeds and all(is_int(s) for s in seeds) and len(set(seeds)) == len(seeds)),
           "seeds", seeds, "a list of distinct integer seeds (or null for the single `seed`)", "Use e.g. 'seeds=[0,1,2,3]' (quoted in a shell).")

    init = cfg["init"]
    optimizer, settings = lookup(OPTIMIZERS, "optimizer", opt["name"]), {"n": train_size, **_hparams(opt, "optimizer")}
    output_name = model["output_activation"]
    activation = facts(**_hparams(act, "activation"))
    output_activation = lookup(OUTPUT_ACTIVATIONS, "model.output_activation", output_name)()
    initializer = lookup(INITIALIZERS, "init", init["name"])(**_hparams(init, "init"))
    net = lookup(MODELS, "model", model_name)(model, initializer, activation, output_activation)
    return Spec(
        net=net,
        model_name=model_name,
        sizes=net.sizes,
        activation_name=act["name"],
        activation=activation,
        activation_facts=facts,
        output_activation=output_activation,
        cost=lookup(COSTS, "cost", cfg["cost"]["name"])(output_name),
        initializer=initializer,
        optimizer=injected(optimizer, **settings) if sched["name"] != "constant" else optimizer(**settings),
        optimizer_at=None if sched["name"] != "constant" else _at_runtime(optimizer, settings),
        hyper=() if sched["name"] != "constant" else (float(opt["eta"]), float(opt["lmbda"]) / train_size),
        schedule_name=sched["name"],
        schedule=schedule,
        early_stopping_n=stopping,
        lmbda=float(opt["lmbda"]),
        epochs=train["epochs"],
        mini_batch_size=m,
        shuffle=train["shuffle"],
        eval_splits=tuple(name for name in SPLITS if name in splits),
        eval_every=eval_every,
        train_size=train_size,
        probe_size=min(probe_size, train_size),
        probes=probes,
        batch_norm=batch_norm,
        seed=cfg["seed"],
        seeds=None if seeds is None else tuple(seeds),
        stop_on_divergence=bool(train["stop_on_divergence"]),
        checkpoint_every=train["checkpoint_every"],
        data_path=data["path"],
        dataset=dataset,
        originals=train_size // per_image,
        validation_size=validation_size,
        conv_impl=model["conv_impl"] if model_name == "conv" else "auto",  # conf/model/conv.yaml's key
        structure=program_structure(cfg, hyper_at_runtime=sched["name"] == "constant"),
        **_backend(cfg),
    )


def _complete(cfg: dict):
    """Raises ConfigError naming the keys nnx added since `cfg` was written, if it lacks any."""
    absent = missing(cfg)
    if absent:
        raise ConfigError(f"the config has no {', '.join(absent)}: nnx added them after it was written. Give a config recorded by an "
                          f"earlier nnx to nnx.migrate.migrate(cfg) first, or compose yours from conf/ (nnx.edges.configs.compose).")


# Settings that no compiled program reads: the seeds and the initialization (drawn before training),
# the host's loop (epochs, evaluations, stopping, checkpoints, probing times), sizes (array shapes,
# which jit tells apart itself) and where things are stored. With the book's fixed eta, eta and
# lmbda / n reach the programs as arguments (Spec.hyper), so they join them.
UNCOMPILED = ("seed", "seeds", "resume", "tracking", "init", "train.epochs", "train.eval_splits", "train.eval_every",
              "train.early_stopping_n", "train.stop_on_divergence", "train.checkpoint_every", "probes.size", "probes.every",
              "probes.jacobian_every", "data.path", "data.validation_size")
AT_RUNTIME = ("optimizer.eta", "optimizer.lmbda", "data.train_size")


def program_structure(cfg: dict, hyper_at_runtime: bool) -> str:
    """The config without UNCOMPILED (and AT_RUNTIME where they are arguments), as canonical JSON:
    two networks with the same structure run the same compiled programs (nnx.train keeps them).
    A key not listed counts, so a new setting can only cost a compilation, never reuse a wrong one."""
    dropped = UNCOMPILED + (AT_RUNTIME if hyper_at_runtime else ())

    def kept(prefix: str, node: dict) -> dict:
        return {k: kept(f"{prefix}{k}.", v) if isinstance(v, dict) else v for k, v in node.items() if f"{prefix}{k}" not in dropped}

    return json.dumps(kept("", cfg), sort_keys=True, default=repr)


def _at_runtime(factory, settings: dict) -> Callable:
    """(eta, decay) -> factory's optimizer with those values, decay = lmbda / n computed by the caller
    (in float64, as factory(lmbda, n) computes it: as lmbda=decay, n=1 the same float reaches the update)."""
    others = {k: v for k, v in settings.items() if k not in ("eta", "lmbda", "n")}
    return lambda eta, decay: factory(eta=eta, lmbda=decay, n=1, **others)


DEVICES = ("auto", "cpu", "gpu", "tpu")
PRECISIONS = ("default", "high", "highest")


def _backend(cfg: dict) -> dict:
    """device and train.matmul_precision, checked (nnx.edges.backend checks the device is there before
    any run starts)."""
    device, precision = cfg["device"], cfg["train"]["matmul_precision"]
    check(device in DEVICES, "device", device, f"must be one of {', '.join(DEVICES)}",
          "Use device=auto (what JAX finds), or cpu, gpu, tpu to insist on one.")
    check(precision in PRECISIONS, "train.matmul_precision", precision, f"must be one of {', '.join(PRECISIONS)}",
          "Use train.matmul_precision=highest (true float32 products, what chapter 5's probes need).")
    return {"device": device, "matmul_precision": precision}
