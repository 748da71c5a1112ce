"""Zero-shot accuracy and image-text retrieval recall."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import unit

from selfsup.data.asterisk import Asterisk
from selfsup.evaluation.zero_shot import (
    AUDIO_TEMPLATES,
    DEFAULT_TEMPLATES,
    default_templates,
    retrieval_recall,
    zero_shot_accuracy,
)


def test_zero_shot_accuracy_is_perfect_when_images_equal_their_class_embeddings():
    classes = unit(6, 16, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 3, 0])
    result = zero_shot_accuracy(classes[labels], labels, classes)
    assert result == {"zero_shot_top1": 1.0, "zero_shot_top5": 1.0}
    shifted = zero_shot_accuracy(classes[(labels + 1) % 6], labels, classes)
    assert shifted["zero_shot_top1"] == 0.0


def test_retrieval_recall_counts_the_rank_of_each_true_match():
    images = torch.eye(4)
    swap = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 lean towards each other's image ...
    texts = F.normalize(swap + 0.5 * torch.eye(4), dim=1)  # ... so each ranks second for its own
    result = retrieval_recall(images, texts, ks=(1, 2))
    assert result == {"image_to_text_R@1": 0.5, "image_to_text_R@2": 1.0,
                      "text_to_image_R@1": 0.5, "text_to_image_R@2": 1.0}
    collapsed = retrieval_recall(images, torch.ones(4, 4) / 2, ks=(1,))  # ties count against the query
    assert collapsed["image_to_text_R@1"] == 0.0


def test_retrieval_counts_repeated_images_and_captions_once():
    """A perfect model scores 1 even when rows repeat a caption (two drawings titled alike) or an image (COCO's
    several captions per image); without the ids the repeats would count as misses."""
    e = torch.eye(4)
    images = torch.stack([e[0], e[1], e[2], e[2]])  # rows 2 and 3: one image with two captions
    texts = F.normalize(torch.stack([e[0] + e[1], e[0] + e[1], e[2] + 0.1 * e[3], e[2] - 0.1 * e[3]]), dim=1)
    image_ids, text_ids = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 2])  # rows 0 and 1: one caption
    grouped = retrieval_recall(images, texts, ks=(1,), image_ids=image_ids, text_ids=text_ids)
    assert grouped == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}
    assert retrieval_recall(images, texts, ks=(1,))["text_to_image_R@1"] < 1.0


def test_audio_retrieval_is_named_after_audio_and_finds_each_clip_of_a_known_pairing():
    sounds = unit(5, 8, 2)
    order = torch.tensor([3, 0, 4, 1, 2])  # caption i describes clip order[i]
    captions = sounds[order]
    result = retrieval_recall(sounds[order], captions, ks=(1,), media="audio")
    assert result == {"audio_to_text_R@1": 1.0, "text_to_audio_R@1": 1.0}
    wrong = retrieval_recall(sounds, captions, ks=(1,), media="audio")  # pairs out of step: only fixed points match
    assert wrong["audio_to_text_R@1"] == 0.0


def test_prompts_are_the_datas_own_where_it_names_them_else_those_of_the_media():
    class Dual:
        def __init__(self, modality: str) -> None:
            self.modality = modality

    class Words:
        prompt_templates = ("{}",)

    assert default_templates(Dual("audio-text"), Words()) == ("{}",)
    assert default_templates(Dual("audio-text"), object()) == AUDIO_TEMPLATES
    assert default_templates(Dual("image-text"), object()) == DEFAULT_TEMPLATES
    assert default_templates(Dual("audio-text"), Asterisk) == ("{}",)
