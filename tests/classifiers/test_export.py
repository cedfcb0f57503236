"""ONNX export parity: labels identical, probabilities within 1e-4, Unicode text included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from classifiers import (
    UNICODE_PROBES,
    ExportParityError,
    check_parity,
    export_onnx,
    load_taxonomy,
    onnx_session,
    request_text,
    run_onnx,
    train_classifier,
)
from classifiers.training import TrainedClassifier
from demo.logs import generate_records, true_task_type

ACCENTED_AND_CJK = [
    "Résumez ce paragraphe, s'il vous plaît : « Le café était déjà froid à Genève. »",
    "Übersetze ins Englische: „Die Straße ist nass und der Bäcker hat geschlossen.“",
    "¿Cuántos años tenía Cervantes cuando publicó el Quijote? Piensa paso a paso.",
    "请把下面的句子翻译成英文：我们明天在上海开会。",
    "この文章を要約してください：東京タワーは1958年に完成した。",
    "한국어 리뷰를 분류하세요: 배송이 빨라요!",
    "Напиши функцию на Python, которая сортирует список.",
    "Naïve façade coöperation — ﬁnancial ǅ İ ß ΣΊΣΥΦΟΣ 😀👍🏽",
]


@pytest.fixture(scope="module")
def trained() -> TrainedClassifier:
    recs = generate_records(1200, 9)
    return train_classifier(
        [r["request"]["messages"] for r in recs],
        [true_task_type(r) for r in recs],
        taxonomy=load_taxonomy(),
    )


def test_parity_on_the_evaluation_set_and_on_accented_and_cjk_text(
    trained: TrainedClassifier,
) -> None:
    model = export_onnx(trained.pipeline)
    texts = trained.test_texts + [
        request_text([{"role": "user", "content": t}]) for t in ACCENTED_AND_CJK
    ]
    report = check_parity(trained.pipeline, model, texts)
    assert report.labels_equal
    assert report.rows == len(texts) + len(UNICODE_PROBES)
    assert report.max_abs_diff < 1e-4
    labels, proba = run_onnx(onnx_session(model), texts)
    assert labels == [str(x) for x in trained.pipeline.predict(texts)]
    np.testing.assert_allclose(proba, trained.pipeline.predict_proba(texts), atol=1e-4)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_the_model_takes_one_string_and_gives_label_and_probabilities(
    trained: TrainedClassifier,
) -> None:
    model = onnx.load_from_string(export_onnx(trained.pipeline))
    assert [i.name for i in model.graph.input] == ["text"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["classes"].split(",") == list(trained.classes)


def test_a_tampered_export_fails_parity_with_the_rows_that_differ(
    trained: TrainedClassifier,
) -> None:
    model = onnx.load_from_string(export_onnx(trained.pipeline))
    for init in model.graph.initializer:
        if init.name == "words_w":  # the word view's weights: flip them
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init) * 5, "words_w"))
    with pytest.raises(ExportParityError) as info:
        check_parity(trained.pipeline, model.SerializeToString(), trained.test_texts[:50])
    assert info.value.rows and all(0 <= r < 50 + len(UNICODE_PROBES) for r in info.value.rows)
    assert info.value.details[0]["max_abs_diff"] > 1e-4
    assert "export refused" in str(info.value)


def test_binary_classifier_exports_too() -> None:
    reqs = [
        [{"role": "user", "content": f"Translate to French: item {i} please"}] for i in range(12)
    ]
    reqs += [
        [{"role": "user", "content": f"Write a Python function number {i}"}] for i in range(12)
    ]
    trained = train_classifier(reqs, ["rewrite"] * 12 + ["code"] * 12, taxonomy=load_taxonomy())
    model = export_onnx(trained.pipeline)
    report = check_parity(trained.pipeline, model, trained.test_texts)
    assert report.labels_equal and report.max_abs_diff < 1e-4


def test_parity_holds_when_the_vocabulary_holds_what_a_tokenizer_would_pad_with() -> None:
    """Markdown headings put '###' and 'c#'-like n-grams in the char vocabulary; rows of one
    batch are padded to the longest, and the padding must never count as text."""
    recs = generate_records(600, 4)
    requests = [r["request"]["messages"] for r in recs]
    labels = [true_task_type(r) for r in recs]
    for k in range(40):
        body = f"### Report {k}\n\n#### Details\nRevenue grew in region {k}. ## Summary ###"
        requests.append([{"role": "user", "content": f"Summarize this:\n{body}"}])
        labels.append("summarization")
        requests.append([{"role": "user", "content": f"Fix my C# method number {k} please #"}])
        labels.append("code")
    trained = train_classifier(requests, labels, taxonomy=load_taxonomy())
    chars = dict(trained.pipeline.named_steps["views"].transformer_list)["chars"]
    assert "###" in chars.vocabulary_
    model = export_onnx(trained.pipeline)
    short = [request_text([{"role": "user", "content": t}]) for t in ("hi", "ok #", "c# ?")]
    report = check_parity(trained.pipeline, model, trained.test_texts + short)
    assert report.labels_equal and report.max_abs_diff < 1e-4


def test_chinese_and_japanese_words_are_characters_and_export_alike() -> None:
    """Text without spaces between words is read a character at a time by the word view, so its
    bigrams are character pairs ('总 结'), never a whole clause; onnxruntime's tokenizer agrees."""
    zh = [
        ("请总结下面这段话的主要内容：{}公司今年的收入增长了，利润也提高了。", "summarization"),
        ("请把这句话翻译成英文：{}我们明天在上海开会。", "rewrite"),
        ("用Python写一个函数，计算第{}个斐波那契数。", "code"),
        ("次の文章を要約してください：東京タワーは{}年に完成した。", "summarization"),
    ]
    requests = [
        [{"role": "user", "content": text.format(i)}] for text, _ in zh for i in range(1, 31)
    ]
    labels = [label for _, label in zh for _ in range(1, 31)]
    trained = train_classifier(requests, labels, taxonomy=load_taxonomy())
    words = dict(trained.pipeline.named_steps["views"].transformer_list)["words"]
    assert {"总", "总 结", "翻 译", "要 約", "python"} <= set(words.vocabulary_)
    assert not any("主要内容" in term for term in words.vocabulary_)
    probes = [
        request_text([{"role": "user", "content": t}])
        for t in ("总结一下：天气很好。", "翻译：你好，世界！", "要約：東京", "写代码")
    ]
    model = export_onnx(trained.pipeline)
    report = check_parity(trained.pipeline, model, trained.test_texts + probes)
    assert report.labels_equal and report.max_abs_diff < 1e-4
