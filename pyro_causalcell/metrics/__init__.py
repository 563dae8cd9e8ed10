"""Scores of learned models against ground truth: identifiability, targets, clustering,
independence, integration and response prediction; and which latents a model uses. Pure
NumPy / SciPy: nothing here runs a model (the importance-weighted ELBO, which does, is in
:mod:`pyro_causalcell.infer`)."""

from .activity import ACTIVITY_THRESHOLD, inactive_latents, latent_activity
from .clustering import (ClusterAgreement, adjusted_rand_index, cluster_agreement, kmeans,
                         normalized_mutual_information)
from .identifiability import correlation_matrix, linear_r2, mean_correlation_coefficient
from .independence import (IndependenceTest, conditional_independence_test, gaussian_kernel,
                           hsic, hsic_test, kernel_ridge_residuals, median_bandwidth)
from .integration import batch_mixing, label_silhouette, silhouette_samples
from .response import ResponseR2, energy_distance, mean_expression_r2, response_r2, top_de_genes
from .targets import (PrecisionRecallF1, latent_signs, match_latents, permute_targets,
                      target_auroc, target_average_precision, target_precision_recall_f1)

__all__ = [
    "ACTIVITY_THRESHOLD", "latent_activity", "inactive_latents",
    "correlation_matrix", "linear_r2", "mean_correlation_coefficient",
    "latent_signs", "match_latents", "permute_targets", "target_precision_recall_f1",
    "target_auroc", "target_average_precision", "PrecisionRecallF1",
    "normalized_mutual_information", "adjusted_rand_index", "kmeans", "cluster_agreement",
    "ClusterAgreement",
    "hsic", "hsic_test", "conditional_independence_test", "gaussian_kernel", "median_bandwidth",
    "kernel_ridge_residuals", "IndependenceTest",
    "label_silhouette", "silhouette_samples", "batch_mixing",
    "mean_expression_r2", "top_de_genes", "response_r2", "energy_distance", "ResponseR2",
]
