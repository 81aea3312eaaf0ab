func.func @main(%w: tensor<4x8xui4>) -> tensor<4x8xf32> {
  %wf = stablehlo.convert %w : (tensor<4x8xui4>) -> tensor<4x8xf32>
  return %wf : tensor<4x8xf32>
}
