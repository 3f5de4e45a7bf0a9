"""A tiny chat model with random weights, built here in seconds with nothing downloaded.

Tests and the demo need a local model directory that `LocalChatBackend` loads exactly
like a real one (`save_pretrained` of a causal LM and its tokenizer, with a chat
template), but no model hub is reachable and model binaries are never committed. So
this module makes one: a byte-level BPE tokenizer trained on the fixed text below and a
2-layer GPT-2 with seeded random weights. Its answers are word salad; its shapes,
streaming, sampling and speed behave like a real model's.

torch and transformers are imported inside the function: importing this module costs
nothing, so the serving process stays free of torch unless it builds or runs a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when anything below changes what is built: a directory with another recipe is
# rebuilt, one with this recipe is reused as it is.
RECIPE = "tiny-gpt2-bpe-v1"
MARKER = "surge_tiny_model.json"

END_OF_TEXT = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The tokenizer's training text. Fixed here, so the same merges come out on every machine.
CORPUS = """\
An inference server sits between applications and their models. A request arrives over
HTTP, is checked, routed and admitted into a queue; a batch is formed and a replica runs
the model. The answer goes back with timings, a request id and a receipt of its cost.

Language models answer one token at a time. The first token waits for the whole prompt
to be read, and every later token costs one step of the model. Streaming sends each
piece of text as soon as it is produced, so the reader sees the answer grow while the
model is still thinking about the rest of it.

When the machine is busy, a good server says so early: it refuses with a status that
asks the client to come back later, and it tells the client when. A queue without a
bound only turns a short overload into a long outage, because every request in it will
miss its deadline anyway.

The weather was mild that morning. She walked along the river with her dog, watched the
boats drift past the old bridge, and stopped at the bakery for bread and coffee. Later,
friends came over for dinner; they talked about books, music, travel and the garden,
and laughed until the candles burned low.

Numbers and symbols appear in text too: 3 apples, 12 pears, 2024-05-17, 42%, $7.50,
e-mail@example.com, (a + b) * c = d; "quoted words" and 'single quotes' - done!
"""


def build_tiny_chat_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny chat model into `path` (or reuse the one already there) and return it.

    The build is reproducible: the same seed gives the same weights and tokenizer.
    It writes into a temporary sibling directory and renames it into place, so a reader
    never sees a half-built model and two builders racing for one path both succeed.
    A directory that holds something other than a tiny model is never deleted.
    """
    path = Path(path)
    recipe = {"recipe": RECIPE, "seed": seed}
    if _recipe_of(path) == recipe:
        return path
    if path.exists():
        if _recipe_of(path) is None and any(path.iterdir()):
            raise ValueError(f"{path} holds files that are not a tiny model; not overwriting")
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would hide the model from other users
    try:
        _build(staging, seed)
        (staging / MARKER).write_text(json.dumps(recipe) + "\n")
        try:
            os.replace(staging, path)
        except OSError:
            # Another builder won the race; theirs is the same model if the recipe matches.
            if _recipe_of(path) != recipe:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _recipe_of(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build(directory: Path, seed: int) -> None:
    import torch
    import transformers.utils.logging as hf_logging
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = [END_OF_TEXT, TURN_START, TURN_END]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte can be encoded
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=TURN_END,  # the end of the assistant's turn ends its answer
        pad_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        additional_special_tokens=[TURN_START],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512

    eos_id = tokenizer.convert_tokens_to_ids(TURN_END)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # The output layer is tied to the embeddings, so a zero row gives the special
        # tokens a logit of 0, well below the top of 500 random ones: the random model
        # (almost) never ends its answer by itself, and tests see max_tokens honoured.
        for token in specials:
            model.transformer.wte.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per test run is noise
    try:
        model.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)
