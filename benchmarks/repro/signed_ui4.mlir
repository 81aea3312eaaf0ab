func.func @main(%w: tensor<4x8xui4>, %x: tensor<8xf32>) -> tensor<4xf32> {
  %wf = stablehlo.convert %w : (tensor<4x8xui4>) -> tensor<4x8xf32>
  %y = stablehlo.dot_general %wf, %x, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4xf32>
  return %y : tensor<4xf32>
}
