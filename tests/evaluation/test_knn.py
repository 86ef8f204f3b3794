import jax
import numpy as np
import pytest

from simsiam_jax import sharding
from simsiam_jax.evaluation import knn


def _brute_force_votes(queries, bank, bank_labels, k, temperature, num_classes):
  """InstDisc's weighted kNN in float64: [queries, classes] vote totals of the k nearest."""
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  votes = np.zeros((len(queries), num_classes))
  for row, query in enumerate(queries):
    similarities = bank @ query
    for i in np.argsort(-similarities)[:k]:
      votes[row, bank_labels[i]] += np.exp(similarities[i] / temperature)
  return votes


def _clustered_data(rng, centers, num, noise):
  labels = rng.integers(0, len(centers), num)
  return centers[labels] + noise * rng.normal(size=(num, centers.shape[1])), labels


@pytest.mark.parametrize('num_devices,bank_size,k', [(8, 203, 20), (1, 203, 20), (8, 37, 200)])
def test_matches_brute_force(num_devices, bank_size, k):
  """Sharded (bank not a multiple of the device count; k above the bank size too)."""
  rng = np.random.default_rng(0)
  num_classes, dim = 5, 16
  centers = rng.normal(size=(num_classes, dim))
  bank, bank_labels = _clustered_data(rng, centers, bank_size, noise=1.0)
  queries, query_labels = _clustered_data(rng, centers, 50, noise=1.0)
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  # Two batches, as the monitor builds the bank from batches of features.
  sharded_bank, sharded_labels = knn.build_feature_bank(
      [bank[:100], bank[100:]], [bank_labels[:100], bank_labels[100:]], mesh)
  assert sharded_bank.shape[0] % num_devices == 0
  assert len(sharded_bank.sharding.device_set) == num_devices
  scores = knn.knn_class_scores(queries, sharded_bank, sharded_labels, k=k, temperature=0.1,
                                num_classes=num_classes, mesh=mesh)
  votes = _brute_force_votes(queries, bank, bank_labels, k, 0.1, num_classes)
  # Every class's total, not only the winner: the temperature and k change the totals.
  np.testing.assert_allclose(scores, votes, rtol=1e-5)
  expected = np.argmax(votes, axis=1)
  padded_labels = np.concatenate([query_labels, [knn.PAD_LABEL] * 6])
  padded_queries = np.concatenate([queries, queries[:6]])  # Padding must not count.
  correct = knn.count_correct(padded_queries, padded_labels, sharded_bank, sharded_labels, k=k,
                              temperature=0.1, num_classes=num_classes, mesh=mesh)
  accuracy = int(correct) / len(queries)
  np.testing.assert_allclose(accuracy, np.mean(expected == query_labels))
  assert 0.3 < accuracy < 1.0  # Noisy clusters: informative, not trivially separable.
