"""Regenerate sample_data/mixed_pairs.jsonl: a reproducible mixed-length set of Chinese and English pairs.

Passages run from a few words to well over 512 tokens, so truncation, padding and batching all get
exercised. ``python -m tools.make_sample_data`` rewrites the file byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

QUERIES = {
    "zh": [
        "如何申请软件著作权?",
        "什么是深度学习?",
        "Python中如何读取JSON文件?",
        "向量检索和关键词检索有什么区别?",
        "如何提高RAG系统的回答质量?",
        "交叉编码器为什么比双塔模型更准确?",
    ],
    "en": [
        "How do I register a software copyright?",
        "What is deep learning?",
        "How do I read a JSON file in Python?",
        "What is the difference between vector search and keyword search?",
        "How can I improve answer quality in a RAG pipeline?",
        "Why is a cross-encoder more accurate than a bi-encoder?",
    ],
}
SENTENCES = {
    "zh": [
        "软件著作权登记需要提交申请表和源代码等鉴别材料。",
        "商标注册申请应向商标局提交并提供商标图样。",
        "深度学习使用多层神经网络从数据中学习特征表示。",
        "苹果和香蕉都是常见的水果，富含维生素。",
        "使用json.load()函数可以从文件对象中读取JSON数据。",
        "pandas.read_csv()函数可以读取CSV文件。",
        "向量检索根据语义相似度查找文档，而关键词检索依赖词语匹配。",
        "BM25是一种经典的关键词检索算法。",
        "重排序模型会同时阅读查询和文档，给出真实的相关性分数。",
        "检索增强生成系统先检索候选段落，再由大模型生成答案。",
        "交叉编码器把查询和文档拼接在一起输入模型，因此能捕捉细粒度的交互。",
        "双塔模型分别编码查询和文档，速度快但精度较低。",
        "今天的天气很好，适合去公园散步。",
        "这家餐厅的菜很好吃，价格也不贵。",
    ],
    "en": [
        "To register a software copyright, file an application and deposit part of the source code.",
        "A trademark application must include a drawing of the mark.",
        "Deep learning trains multi-layer neural networks to learn representations from data.",
        "Apples and bananas are popular fruits rich in vitamins.",
        "Use json.load on an open file object to read JSON data in Python.",
        "pandas.read_csv reads a comma-separated values file into a DataFrame.",
        "Vector search finds documents by semantic similarity, keyword search by matching terms.",
        "BM25 is a classic keyword ranking function.",
        "A reranker reads the query and the document together and scores their real relevance.",
        "Retrieval-augmented generation first retrieves passages, then lets a language model answer.",
        "A cross-encoder feeds query and document through the model jointly, capturing fine interactions.",
        "A bi-encoder embeds query and document separately: fast, but less precise.",
        "The weather today is lovely for a walk in the park.",
        "This restaurant serves great food at a fair price.",
    ],
}
# Sentence counts per passage: a few very short, most medium, some far past 512 tokens.
LENGTHS = [1, 1, 2, 3, 4, 6, 8, 10, 14, 20, 30, 45, 70]


def generate(count: int = 240, seed: int = 13) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    while len(rows) < count:
        lang = "zh" if len(rows) % 2 == 0 else "en"
        query = rng.choice(QUERIES[lang])
        n = rng.choice(LENGTHS)
        sep = "" if lang == "zh" else " "
        passage = sep.join(rng.choice(SENTENCES[lang]) for _ in range(n))
        rows.append({"id": f"{lang}-{len(rows):04d}", "lang": lang, "query": query, "passage": passage})
        if rng.random() < 0.05 and len(rows) < count:  # a few exact duplicate pairs, as real logs have
            rows.append({**rows[-1], "id": f"{lang}-{len(rows):04d}"})
    return rows


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "sample_data" / "mixed_pairs.jsonl"
    out.write_bytes(b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in generate()))
    print(out)


if __name__ == "__main__":
    main()
