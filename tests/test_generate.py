"""The reference prompt, embeddings and greedy generation."""

from __future__ import annotations

import torch

from panda_edge.prompt import IMAGE_TOKEN_INDEX, SYSTEM_PROMPT, build_prompt
from panda_edge.sampling import Sampling
from panda_edge.video import load_video


def test_prompt_text() -> None:
    assert (
        build_prompt("What color?", n_frames=2)
        == f"{SYSTEM_PROMPT} USER: <image><image>\nWhat color? ASSISTANT:"
    )
    follow_up = build_prompt("And now?", n_frames=1, history=[("What?", "red")])
    assert follow_up == f"{SYSTEM_PROMPT} USER: <image>\nWhat? ASSISTANT: red</s>USER: And now? ASSISTANT:"


def test_prompt_ids_are_chunked_with_one_bos(tiny_model) -> None:
    tok = tiny_model.tokenizer
    ids = tok.prompt_ids(build_prompt("What color is the ring?"))
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    first = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[first : first + 8] == [IMAGE_TOKEN_INDEX] * 8 and ids.count(IMAGE_TOKEN_INDEX) == 8
    # The chunk after <image> is tokenized on its own: SentencePiece's dummy prefix, then the newline byte.
    after = [tok.sp.id_to_piece(i) for i in ids[first + 8 : first + 10]]
    assert after == ["▁", "<0x0A>"]
    assert ids[first + 8 :] == tok.encode("\nWhat color is the ring? ASSISTANT:")


def test_frames_fill_their_image_places(tiny_model, make_video) -> None:
    frames = load_video(make_video(), tiny_model.config.vision)
    with torch.no_grad():
        visual = tiny_model.encode_frames(frames)
        ids = tiny_model.tokenizer.prompt_ids(build_prompt("What color is the ring?"))
        embeds = tiny_model.prompt_embeddings(ids, visual)[0]
    text_tokens = sum(1 for i in ids if i != IMAGE_TOKEN_INDEX)
    assert embeds.shape[0] == text_tokens + sum(v.shape[0] for v in visual)
    start = ids.index(IMAGE_TOKEN_INDEX)
    for frame in visual:
        assert torch.equal(embeds[start : start + frame.shape[0]], frame)
        start += frame.shape[0]


def test_greedy_matches_transformers_generate(tiny_model, make_video) -> None:
    """Our KV-cached greedy loop gives the tokens transformers' own `generate` gives."""
    frames = load_video(make_video(), tiny_model.config.vision)
    ours = list(tiny_model.stream_generate(frames, "What color is the ring?", max_new_tokens=12))
    with torch.no_grad():
        visual = tiny_model.encode_frames(frames)
        ids = tiny_model.tokenizer.prompt_ids(build_prompt("What color is the ring?"))
        embeds = tiny_model.prompt_embeddings(ids, visual)
        theirs = tiny_model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tiny_model.tokenizer.eos_id,
            pad_token_id=tiny_model.tokenizer.eos_id,
        )[0].tolist()
    if tiny_model.tokenizer.eos_id in theirs:
        theirs = theirs[: theirs.index(tiny_model.tokenizer.eos_id)]
    assert len(ours) > 0
    assert ours == theirs


def test_generate_from_path_equals_frames_and_streams(tiny_model, make_video) -> None:
    path = make_video()
    pieces: list[str] = []
    answer = tiny_model.generate(path, "How many shapes?", max_new_tokens=8, on_text=pieces.append)
    again = tiny_model.generate(
        load_video(path, tiny_model.config.vision), "How many shapes?", max_new_tokens=8
    )
    assert answer == again
    assert "".join(pieces).strip() == answer


def test_sampling_is_seeded(tiny_model, make_video) -> None:
    frames = load_video(make_video(), tiny_model.config.vision)
    sampling = Sampling(temperature=1.5, top_p=0.9, seed=3)
    a = list(tiny_model.stream_generate(frames, "What?", max_new_tokens=8, sampling=sampling))
    b = list(tiny_model.stream_generate(frames, "What?", max_new_tokens=8, sampling=sampling))
    assert a == b


def test_conversation_ids_first_turn_equals_the_prompt(tiny_model) -> None:
    tok = tiny_model.tokenizer
    ids, is_answer = tok.conversation_ids([("What color is the ring?", None)], n_frames=8)
    assert ids == tok.prompt_ids(build_prompt("What color is the ring?")) and not any(is_answer)


def test_conversation_ids_mark_answers_with_eos(tiny_model) -> None:
    tok = tiny_model.tokenizer
    ids, is_answer = tok.conversation_ids([("What color?", "red"), ("And the shape?", "ring")], n_frames=2)
    answers = [i for i, a in zip(ids, is_answer, strict=True) if a]
    assert tok.decode(answers[: answers.index(tok.eos_id)]) == "red"
    assert answers.count(tok.eos_id) == 2
    text = tok.decode([i for i in ids if i != tok.eos_id])
    assert text.endswith("What color? ASSISTANT: red USER: And the shape? ASSISTANT: ring")
