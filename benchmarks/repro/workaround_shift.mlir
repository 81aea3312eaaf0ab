func.func @main(%w: tensor<4x8xui4>, %x: tensor<8xf32>) -> tensor<4xf32> {
  %c = stablehlo.convert %w : (tensor<4x8xui4>) -> tensor<4x8xf32>
  %eight = stablehlo.constant dense<8.0> : tensor<f32>
  %e = stablehlo.broadcast_in_dim %eight, dims = [] : (tensor<f32>) -> tensor<4x8xf32>
  %wf = stablehlo.subtract %c, %e : tensor<4x8xf32>
  %y = stablehlo.dot_general %wf, %x, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4xf32>
  return %y : tensor<4xf32>
}
