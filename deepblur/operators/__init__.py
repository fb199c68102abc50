"""Operator mathematics on torch tensors (no scikit-learn).

Forward and adjoint of product-convolution operators, their exact Frobenius
Gram matrix, and spectral norms by power iteration.
"""

from deepblur.operators.gram import gram_matrix, operator_distance
from deepblur.operators.norms import power_iteration
from deepblur.operators.product_convolution import (
    ProductConvolution,
    dense_matrix,
    product_convolution,
    product_convolution_adjoint,
)

__all__ = [
    "ProductConvolution",
    "dense_matrix",
    "gram_matrix",
    "operator_distance",
    "power_iteration",
    "product_convolution",
    "product_convolution_adjoint",
]
