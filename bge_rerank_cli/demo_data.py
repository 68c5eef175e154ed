"""The demo's queries: the seed manual's examples, English equivalents, and keyword-trap distractors.

Each set has exactly one passage marked as the answer. Distractors are written to share the query's
words without answering it, which is what fools a keyword (BM25) first stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPassage:
    id: str
    text: str
    answer: bool = False


@dataclass(frozen=True)
class DemoQuery:
    lang: str
    query: str
    passages: tuple[DemoPassage, ...]


P = DemoPassage

# A long operations manual whose answer (how to rotate the billing API keys) sits at the very end,
# far past the first 512 tokens: truncation cuts it off, window scoring (--long-docs chunk) finds it.
_MANUAL_SECTIONS = (
    "Section {n}. The deployment pipeline builds every service from the main branch, runs the unit and "
    "integration suites, and promotes images from staging to production after a manual approval. "
    "Dashboards for latency, error rate and saturation are linked from each service's runbook. "
    "On-call engineers acknowledge pages within five minutes and record every action in the incident channel. "
)
LONG_MANUAL = (
    "Operations handbook for the platform team. "
    + "".join(_MANUAL_SECTIONS.format(n=n) for n in range(1, 15))
    + "Section 15. Rotating the billing service API keys: open the secrets console, create a new key for "
    "billing-api, deploy it with `deployctl rollout billing-api --secret-refresh`, confirm that requests "
    "succeed with the new key, then revoke the old key. Rotate every ninety days."
)
_ZH_SECTION = (
    "第{n}节：部署流水线从主分支构建每个服务，运行单元测试和集成测试，经人工审批后把镜像从预发环境发布到生产环境。"
    "每个服务的运维手册都链接了延迟、错误率和饱和度的监控面板。值班工程师需要在五分钟内确认告警，并在事故频道记录每一步操作。"
)
LONG_MANUAL_ZH = (
    "平台团队运维手册。"
    + "".join(_ZH_SECTION.format(n=n) for n in range(1, 12))
    + "第12节：轮换计费服务的API密钥：打开密钥控制台，为billing-api创建新密钥，执行deployctl rollout billing-api "
    "--secret-refresh部署，确认请求使用新密钥成功后吊销旧密钥。每九十天轮换一次。"
)

DEMO_QUERIES: tuple[DemoQuery, ...] = (
    DemoQuery(
        "zh",
        "如何申请软件著作权?",
        (
            P(
                "zh-c1",
                "软件著作权登记需要向中国版权保护中心提交申请表、软件源代码和用户手册等鉴别材料，审查通过后颁发登记证书。",
                True,
            ),
            P("zh-c2", "商标注册申请应向国家知识产权局商标局提交，需要填写商标注册申请书并提供商标图样。"),
            P(
                "zh-c3",
                "如何看待软件著作权？软件著作权申请的话题很热门，很多人讨论软件著作权和申请著作权的意义。",
            ),
        ),
    ),
    DemoQuery(
        "zh",
        "什么是深度学习?",
        (
            P(
                "zh-d1",
                "深度学习是机器学习的一个分支，它使用多层神经网络从大量数据中自动学习特征表示。",
                True,
            ),
            P("zh-d2", "苹果和香蕉都是常见的水果，富含维生素和膳食纤维。"),
            P(
                "zh-d3",
                "什么是学习？什么是深度？深度阅读和深度思考能帮助学生学习，学习是什么也值得深度思考。",
            ),
        ),
    ),
    DemoQuery(
        "zh",
        "Python中如何读取JSON文件?",
        (
            P("zh-p1", "使用pandas.read_csv()函数可以读取CSV文件，返回一个DataFrame对象。"),
            P(
                "zh-p2",
                "使用json.load()从打开的文件对象中读取数据：with open('data.json') as f: data = json.load(f)。",
                True,
            ),
            P("zh-p3", "requests.get()用于发送HTTP GET请求，响应可以用response.json()解析。"),
            P("zh-p4", "pickle模块用于序列化Python对象，pickle.load()从二进制文件中读取对象。"),
            P(
                "zh-p5",
                "Python中的JSON文件和Python文件有什么区别？如何读取文件？JSON文件是文件，Python文件也是文件。",
            ),
        ),
    ),
    DemoQuery(
        "zh",
        "如何轮换计费服务的API密钥?",
        (
            P("zh-l1", LONG_MANUAL_ZH, True),
            P(
                "zh-l2",
                "计费服务的API密钥很重要：计费服务、API密钥和密钥轮换都是计费服务团队经常讨论的话题。",
            ),
            P("zh-l3", "部署流水线从主分支构建服务，并在审批后发布到生产环境。"),
        ),
    ),
    DemoQuery(
        "en",
        "How do I register a software copyright?",
        (
            P(
                "en-c1",
                "File an application with the copyright office, pay the fee and deposit identifying portions of the source code; a certificate is issued after examination.",
                True,
            ),
            P(
                "en-c2",
                "A trademark application must include a drawing of the mark and a list of the goods and services it covers.",
            ),
            P(
                "en-c3",
                "Software copyright: how do I feel about software copyright? I register my opinion that copyright on software is a hot topic.",
            ),
        ),
    ),
    DemoQuery(
        "en",
        "What is deep learning?",
        (
            P(
                "en-d1",
                "Deep learning is a branch of machine learning that trains multi-layer neural networks to learn representations from large amounts of data.",
                True,
            ),
            P("en-d2", "Apples and bananas are popular fruits that are rich in vitamins and fibre."),
            P(
                "en-d3",
                "What is learning? What is deep? Deep reading is deep learning for students: learning what is deep.",
            ),
        ),
    ),
    DemoQuery(
        "en",
        "How do I read a JSON file in Python?",
        (
            P("en-p1", "pandas.read_csv(path) reads a comma-separated values file into a DataFrame."),
            P("en-p2", "Open it and call json.load: with open('data.json') as f: data = json.load(f).", True),
            P("en-p3", "requests.get(url) sends an HTTP GET request; response.json() decodes the body."),
            P(
                "en-p4",
                "The pickle module serialises objects; pickle.load(f) reads one back from a binary file.",
            ),
            P(
                "en-p5",
                "Python file or JSON file? How do I read a file in Python, and is a JSON file a Python file? Read on.",
            ),
        ),
    ),
    DemoQuery(
        "en",
        "How do I rotate the billing service API keys?",
        (
            P("en-l1", LONG_MANUAL, True),
            P(
                "en-l2",
                "Billing service API keys: the billing service team owns the billing API keys, "
                "and key rotation of the billing service is a common topic.",
            ),
            P("en-l3", "The deployment pipeline builds every service and promotes images after approval."),
        ),
    ),
)
