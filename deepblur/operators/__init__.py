"""Operator mathematics on torch tensors (no scikit-learn).

Forward and adjoint of product-convolution operators, their exact Frobenius
Gram matrix, spectral norms by power iteration, and the rotations and flips
of the square acting on them.
"""

from deepblur.operators.gram import gram_matrix, operator_distance
from deepblur.operators.norms import power_iteration
from deepblur.operators.product_convolution import (
    ProductConvolution,
    dense_matrix,
    product_convolution,
    product_convolution_adjoint,
)
from deepblur.operators.symmetry import (
    CLOSURE_TOLERANCE,
    N_DIHEDRAL,
    dihedral_maps,
    dihedral_transform,
)

__all__ = [
    "CLOSURE_TOLERANCE",
    "N_DIHEDRAL",
    "ProductConvolution",
    "dense_matrix",
    "dihedral_maps",
    "dihedral_transform",
    "gram_matrix",
    "operator_distance",
    "power_iteration",
    "product_convolution",
    "product_convolution_adjoint",
]
