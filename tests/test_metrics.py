import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn import metrics as skm

from tuneforge.tasks import get_task
from tuneforge.tasks.metrics import ClassificationMetrics, MultiLabelMetrics, RegressionMetrics


def feed(metric, logits, labels, batch=7):
    for i in range(0, len(labels), batch):
        metric.update(logits[i:i + batch], labels[i:i + batch])
    return metric.compute()


def test_binary_hand_worked():
    # truth:  1 1 1 0 0 ; predicted: 1 1 0 1 0  -> TP=2 FN=1 FP=1 TN=1
    labels = torch.tensor([1, 1, 1, 0, 0])
    logits = torch.tensor([[0., 1], [0, 1], [1, 0], [0, 1], [1, 0]])
    m = feed(ClassificationMetrics(2), logits, labels, batch=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert m["mcc"] == pytest.approx(1 / 6)


def test_multiclass_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (103,), generator=g)
    logits = torch.randn(103, 4, generator=g) + torch.nn.functional.one_hot(labels, 4) * 0.8
    m = feed(ClassificationMetrics(4), logits, labels)
    y, p = labels.numpy(), logits.argmax(-1).numpy()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, p, average="micro"))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, p, average="macro"))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, p, average="macro"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, p))


def test_multilabel_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(57, 5, generator=g) > 0.6).float()
    logits = torch.randn(57, 5, generator=g) + (labels * 2 - 1)
    m = feed(MultiLabelMetrics(5, 0.5), logits, labels)
    y, p = labels.numpy().astype(int), (torch.sigmoid(logits) > 0.5).numpy().astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, p, average="micro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y.ravel(), p.ravel()))


def test_regression_matches_numpy_and_scipy():
    g = torch.Generator().manual_seed(2)
    labels = torch.randn(64, generator=g)
    preds = labels + 0.5 * torch.randn(64, generator=g)
    m = feed(RegressionMetrics(), preds.unsqueeze(1), labels, batch=10)
    x, y = preds.double().numpy(), labels.double().numpy()
    assert m["mse"] == pytest.approx(np.mean((x - y) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(x - y)))
    assert m["pearson"] == pytest.approx(pearsonr(x, y).statistic, rel=1e-5)
    assert m["spearman"] == pytest.approx(spearmanr(x, y).statistic, rel=1e-5)


def test_losses_are_sums_with_hand_worked_values():
    ce = get_task("classification").loss_sum(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    assert float(ce) == pytest.approx(2 * np.log(2))
    bce = get_task("multi-label").loss_sum(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]]))
    assert float(bce) == pytest.approx(3 * np.log(2))
    mse = get_task("regression").loss_sum(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    assert float(mse) == pytest.approx(1 + 4)
