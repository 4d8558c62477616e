"""The scene reader's data and packaging: scenes draw what their answers say, training sees exactly
the prompt the server renders, and the shipped weights build into a model that reads scenes.

Accuracy through the real server (and under pruning) is in tests/integration/test_visual_pruning.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch

from engine.catalogue import resolve_model
from engine.scenes_vlm.examples import FixedDraws, conversation_text, encode, patch_owners, patch_targets
from engine.scenes_vlm.held_out import TEST_SEED_BASE, chance_by_kind, held_out_questions
from engine.scenes_vlm.model import IMAGE_TOKEN, NUM_IMAGE_TOKENS, scene_tokenizer
from engine.scenes_vlm.questions import Question, all_questions, normalise_answer
from engine.scenes_vlm.scenes import (
    CELL,
    CELL_NAMES,
    COLOURS,
    GRID,
    SHAPES,
    WORDS,
    make_scene,
    render,
    render_with_layout,
)
from engine.scenes_vlm.weights import WEIGHTS_FILE, build_scene_reader
from engine.vlm_recipe import write_chat_template
from service.settings import Settings

SEEDS = range(60)


@pytest.fixture(scope="module")
def text_model_dir() -> Path:
    return Path(resolve_model("SmolLM2-135M-Instruct", Settings().cache_dir).path)


@pytest.fixture(scope="module")
def tokenizer(text_model_dir: Path):
    return scene_tokenizer(text_model_dir)


def _cell_pixels(image, cell: int) -> np.ndarray:
    row, column = divmod(cell, GRID)
    return np.asarray(image)[row * CELL:(row + 1) * CELL, column * CELL:(column + 1) * CELL].reshape(-1, 3)


def test_a_seed_is_always_the_same_scene_and_image():
    assert make_scene(7) == make_scene(7)
    assert np.array_equal(np.asarray(render(make_scene(7))), np.asarray(render(make_scene(7))))
    assert not np.array_equal(np.asarray(render(make_scene(7))), np.asarray(render(make_scene(8))))


def test_every_shape_is_drawn_in_its_own_cell_and_colour():
    for seed in SEEDS:
        scene = make_scene(seed)
        image = render(scene)
        occupied = {shape.cell for shape in scene.shapes}
        for shape in scene.shapes:
            pixels = _cell_pixels(image, shape.cell)
            assert (pixels == COLOURS[shape.colour]).all(axis=1).sum() > 400, (seed, shape)
        for cell in set(range(GRID * GRID)) - occupied:
            pixels = _cell_pixels(image, cell)
            for colour in COLOURS.values():  # no shape colour leaks into a cell without a shape
                assert not (pixels == colour).all(axis=1).any(), (seed, cell)
        if scene.word is not None:
            dark = (_cell_pixels(image, scene.word_cell) < 60).all(axis=1).sum()
            assert dark > 100, (seed, scene.word)


def test_patch_labels_name_the_object_each_patch_shows():
    """The dense training labels: a patch labelled with a colour shows that colour; every shape and the
    word own at least one patch; patches of background and clutter are labelled nothing."""
    for seed in SEEDS:
        scene = make_scene(seed)
        image, layout = render_with_layout(scene)
        labels = patch_targets(scene, patch_owners(scene, layout))  # [576, 4]
        pixels = np.asarray(image).reshape(24, 14, 24, 14, 3).transpose(0, 2, 1, 3, 4).reshape(576, -1, 3)
        colours = list(COLOURS.values())
        for patch in torch.nonzero(labels[:, 0]).flatten().tolist():
            colour = colours[labels[patch, 0] - 1]
            assert (pixels[patch] == colour).all(axis=1).sum() >= 40, (seed, patch)
        owned = {(int(c), int(s)) for c, s in labels[:, :2].tolist()}
        for shape in scene.shapes:
            assert (list(COLOURS).index(shape.colour) + 1, SHAPES.index(shape.shape) + 1) in owned, (seed, shape)
        if scene.word is not None:
            assert (labels[:, 2] == WORDS.index(scene.word) + 1).any()
        assert (labels.sum(dim=1) == 0).sum() > 576 // 3  # most of every scene is background
        for patch in torch.nonzero(labels[:, 3]).flatten().tolist():  # a labelled patch lies in its cell
            row, column = divmod(patch, 24)
            assert (row * 14 + 7) // CELL * GRID + (column * 14 + 7) // CELL == labels[patch, 3] - 1, (seed, patch)


def test_each_answer_is_grounded_in_the_patches_of_what_it_names():
    """The attention targets training uses: a colour or shape answer's patches show that colour or
    shape, a position answer's lie in the named cell, a count's number of objects is the answer,
    and text's is the word."""
    for seed in SEEDS:
        scene = make_scene(seed)
        _, layout = render_with_layout(scene)
        owners = patch_owners(scene, layout)  # [576]
        labels = patch_targets(scene, owners)  # [576, 4]
        for question in all_questions(scene, random.Random(seed)):
            read_from = torch.isin(owners, torch.tensor(question.objects, dtype=owners.dtype))  # [576]
            if question.kind == "count":
                assert len(question.objects) == int(question.answer), (seed, question)
                continue
            assert read_from.any(), (seed, question)
            if question.kind == "colour":
                assert (labels[read_from, 0] == list(COLOURS).index(question.answer) + 1).all()
            elif question.kind == "shape":
                assert (labels[read_from, 1] == SHAPES.index(question.answer) + 1).all()
            elif question.kind == "position":
                assert (labels[read_from, 3] == CELL_NAMES.index(question.answer) + 1).all()
            else:
                assert (labels[read_from, 2] == WORDS.index(question.answer) + 1).all()


def test_answers_agree_with_the_scene():
    for seed in SEEDS:
        scene = make_scene(seed)
        for question in all_questions(scene, random.Random(seed)):
            if question.kind == "count":
                subject = question.text.removeprefix("How many ").removesuffix(" are there?")
                colour = subject.removesuffix(" shapes")
                expected = sum(s.colour == colour or f"{s.shape}s" == subject for s in scene.shapes)
                assert question.answer == str(expected), (seed, question)
            elif question.kind == "position":
                colour, shape = question.text.removeprefix("Where is the ").removesuffix("?").split()
                [match] = [s for s in scene.shapes if (s.colour, s.shape) == (colour, shape)]
                assert question.answer == CELL_NAMES[match.cell]
            elif question.kind == "text":
                assert question.answer == scene.word
            elif question.kind == "colour":
                assert any(s.colour == question.answer and s.shape in question.text for s in scene.shapes)
            else:
                assert any(s.shape == question.answer for s in scene.shapes)


def test_the_held_out_set_is_balanced_and_its_chance_is_far_from_one():
    questions = held_out_questions(200)
    assert all(q.seed >= TEST_SEED_BASE for q in questions)
    kinds = {q.kind for q in questions}
    assert kinds == {"colour", "shape", "count", "position", "text"}
    assert max(chance_by_kind(questions).values()) < 0.6


def test_replies_are_compared_without_case_space_or_full_stop():
    assert normalise_answer(" Red.\n") == "red"
    assert normalise_answer("Top Left") == "top left"
    assert normalise_answer("red circle") != "red"


def _served_prompt(messages: list[dict], tmp_path: Path) -> str:
    write_chat_template(tmp_path, "", IMAGE_TOKEN, "")
    template = jinja2.Environment().from_string((tmp_path / "chat_template.jinja").read_text())
    return template.render(messages=messages, add_generation_prompt=True)


@pytest.mark.parametrize(("draw", "image_first", "system"), [(0.5, True, False), (0.9, False, False),
                                                               (0.1, True, True)])
def test_training_sees_exactly_the_prompt_the_server_renders(tmp_path, draw, image_first, system):
    question = Question("colour", "What colour is the circle?", "red")
    text, _ = conversation_text([question], FixedDraws(draw), with_answers=False)
    parts = [{"type": "image"}, {"type": "text", "text": question.text}]
    messages = [{"role": "user", "content": parts if image_first else parts[::-1]}]
    if system:
        line = text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
        messages.insert(0, {"role": "system", "content": line})
    assert text == _served_prompt(messages, tmp_path)


def test_only_answers_and_their_end_token_are_supervised(tokenizer):
    questions = [Question("shape", "What shape is in the center?", "triangle"),
                 Question("position", "Where is the red circle?", "bottom left")]
    example = encode(tokenizer, questions, FixedDraws(0.5))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert example.input_ids.count(image_id) == NUM_IMAGE_TOKENS
    targets = [example.input_ids[position + 1] for position in example.target_positions]
    assert targets == example.target_ids
    assert tokenizer.decode(example.target_ids) == "triangle<|im_end|>bottom left<|im_end|>"
    assert sorted(set(example.target_answers)) == [0, 1]


def test_what_training_computes_is_the_llava_that_transformers_and_vllm_load(tmp_path, text_model_dir, tokenizer):
    """Saved in vLLM's LLaVA layout and built as the catalogue builds it, the trained module is the model
    LlavaForConditionalGeneration loads: same logits at every supervised position (ViT to layer -2,
    the unread last layer kept, tied embeddings)."""
    from transformers import LlavaForConditionalGeneration

    from engine.scenes_vlm.model import image_processor, llava_config
    from engine.scenes_vlm.train import SceneReader, make_batch
    from engine.scenes_vlm.weights import save_weights
    from engine.scenes_vlm.word_alignment import answer_words

    torch.manual_seed(0)
    config = llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), 1, tokenizer.eos_token_id)
    reader = SceneReader(config, answer_words(tokenizer)).eval()
    for parameter in reader.parameters():
        parameter.data.normal_(0, 0.05)  # not the init: a mapping that swaps two tensors must show
    reader.half().float()  # the rounding saving applies
    save_weights(reader, config, tmp_path / "weights")
    build_scene_reader(text_model_dir, tmp_path / "model", tmp_path / "weights")
    served = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    batch, _ = make_batch([3, 4], tokenizer, image_processor())
    with torch.no_grad():
        logits = served(input_ids=batch.input_ids, pixel_values=batch.pixel_values,
                        attention_mask=batch.attention_mask).logits[batch.target_rows, batch.target_positions]
        expected, _ = reader.answer_logits(batch)  # [T, V]
    assert torch.allclose(logits, expected, atol=1e-4)
    assert (tmp_path / "weights" / WEIGHTS_FILE).stat().st_size < 20 * 2**20  # fp16: ships under 20 MB


def test_the_recipe_runs_end_to_end_and_reports_held_out_accuracy(tmp_path):
    from engine.scenes_vlm.train import main

    main(["--tower-steps", "2", "--steps", "2", "--eval-scenes", "10", "--image-token-drop", "1", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["tower"]["tower_step"] == 2
    assert summary["scenes_seen"] == 2 * summary["preset"]["batch_size"]
    held_out = summary["final"]["held_out"]
    assert sum(held_out["asked"].values()) == 10 and 0 <= held_out["accuracy"] <= 1
    assert (tmp_path / WEIGHTS_FILE).exists() and (tmp_path / "config.json").exists()


def test_a_pruned_batch_is_what_the_language_model_sees_after_pruning_in_vllm(tokenizer):
    """Dropping image tokens keeps the kept ones in order at consecutive positions, moves every later token
    up with its supervision, and narrows each answer's patches to the kept ones; keeping all changes nothing."""
    from engine.scenes_vlm.examples import drop_image_tokens
    from engine.scenes_vlm.model import image_processor, llava_config
    from engine.scenes_vlm.train import SceneReader, make_batch
    from engine.scenes_vlm.word_alignment import answer_words

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    batch, _ = make_batch([5, 6, 7], tokenizer, image_processor())
    kept = torch.stack([torch.randperm(NUM_IMAGE_TOKENS, generator=torch.Generator().manual_seed(row))[:40].sort().values
                        for row in range(3)])  # [B, 40]
    pruned = drop_image_tokens(batch, kept, image_id)
    for row in range(3):
        image = (pruned.input_ids[row] == image_id).nonzero().flatten()
        assert len(image) == 40 and (image.diff() == 1).all()
        assert torch.equal(pruned.input_ids[row][pruned.input_ids[row] != image_id],
                           batch.input_ids[row][batch.input_ids[row] != image_id])
    assert torch.equal(pruned.input_ids[pruned.target_rows, pruned.target_positions + 1], batch.target_ids)
    assert torch.equal(pruned.target_patches, batch.target_patches.gather(1, kept[batch.target_rows]))
    config = llava_config(len(tokenizer), image_id, 1, tokenizer.eos_token_id)
    torch.manual_seed(0)
    reader = SceneReader(config, answer_words(tokenizer)).eval()
    everything = torch.arange(NUM_IMAGE_TOKENS).expand(3, -1)
    with torch.no_grad():
        assert torch.allclose(reader.answer_logits(drop_image_tokens(batch, everything, image_id))[0],
                              reader.answer_logits(batch)[0], atol=1e-5)


def test_serving_before_training_names_the_command_that_trains(tmp_path):
    with pytest.raises(ValueError, match="python -m engine.scenes_vlm.train"):
        build_scene_reader(tmp_path, tmp_path / "model", tmp_path / "no-weights")


def test_image_tokens_are_aligned_to_the_words_an_answer_starts_with(tokenizer):
    """Each kind's classes map to the first token the model writes for them (the second, for a cell's
    column), and a patch whose read-out is exactly its words' embeddings is ranked right on every kind."""
    from engine.scenes_vlm.word_alignment import IGNORE, alignment_loss, answer_words

    words = answer_words(tokenizer)
    decoded = {kind: [tokenizer.decode([token]) for token in getattr(words, kind).tolist()]
               for kind in ("colour", "shape", "word", "row", "column")}
    for kind, names in (("colour", COLOURS), ("shape", SHAPES), ("word", WORDS)):  # "triangle" is "tri" + "angle"
        assert len(set(decoded[kind])) == len(names) and all(map(str.startswith, names, decoded[kind])), decoded[kind]
    for cell, name in enumerate(CELL_NAMES):
        assert name.startswith(decoded["row"][words.row_of_cell[cell]])
        column = words.column_of_cell[cell].item()
        assert (column == IGNORE) == (" " not in name)
        assert column == IGNORE or name.endswith(decoded["column"][column])
    torch.manual_seed(0)
    embeddings = torch.randn(len(tokenizer), 256)  # [V, D]
    labels = torch.tensor([[1, 2, 0, 1], [6, 4, 0, 5], [0, 0, 12, 9]])  # colour, shape, word, cell classes
    read_out = torch.zeros(3, 256)
    for row, (colour, shape, word, cell) in enumerate(labels.tolist()):
        tokens = [words.colour[colour - 1]] * bool(colour) + [words.shape[shape - 1]] * bool(shape)
        tokens += [words.word[word - 1]] * bool(word) + [words.row[words.row_of_cell[cell - 1]]]
        if words.column_of_cell[cell - 1] != IGNORE:
            tokens.append(words.column[words.column_of_cell[cell - 1]])
        read_out[row] = 10 * embeddings[torch.stack(tokens)].sum(0)
    right, accuracy = alignment_loss(read_out, labels, words, embeddings)
    assert set(accuracy.values()) == {1.0}
    wrong, _ = alignment_loss(read_out.roll(1, 0), labels, words, embeddings)
    assert right < wrong
