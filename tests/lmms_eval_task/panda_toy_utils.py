"""lmms-eval's side of the toy-world video QA task (`panda_toy.yaml`): a document is one held-out
question with its video's absolute path; an answer is right when it equals the reference after
`panda eval`'s normalization (lower case, no punctuation or articles)."""

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _normalize(text):
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def doc_to_visual(doc):
    return [doc["video_path"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    return {"exact_match": float(_normalize(results[0]) == _normalize(doc["answer"]))}
