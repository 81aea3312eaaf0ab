module @jit_linear attributes {jax.uses_shape_polymorphism = false, mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func private @forward(%arg0: tensor<1536x18x32xui4>, %arg1: tensor<1536x18xf16>, %arg2: tensor<1536x18xf16>, %arg3: tensor<512x576xf32>) -> (tensor<512x1536xf32> {jax.result_info = "result"}) {
    %c = stablehlo.constant dense<8> : tensor<i8>
    %cst = stablehlo.constant dense<1.000000e+00> : tensor<f32>
    %cst_0 = stablehlo.constant dense<0.000000e+00> : tensor<f32>
    %cst_1 = stablehlo.constant dense<1.270000e+02> : tensor<f32>
    %cst_2 = stablehlo.constant dense<0xFF800000> : tensor<f32>
    %0 = stablehlo.reshape %arg3 : (tensor<512x576xf32>) -> tensor<512x18x32xf32>
    %1 = stablehlo.abs %0 : tensor<512x18x32xf32>
    %2 = stablehlo.reduce(%1 init: %cst_2) applies stablehlo.maximum across dimensions = [2] : (tensor<512x18x32xf32>, tensor<f32>) -> tensor<512x18xf32>
    %3 = stablehlo.broadcast_in_dim %cst_1, dims = [] : (tensor<f32>) -> tensor<512x18xf32>
    %4 = stablehlo.divide %2, %3 : tensor<512x18xf32>
    %5 = stablehlo.broadcast_in_dim %cst_0, dims = [] : (tensor<f32>) -> tensor<512x18xf32>
    %6 = stablehlo.compare GT, %4, %5, FLOAT : (tensor<512x18xf32>, tensor<512x18xf32>) -> tensor<512x18xi1>
    %7 = call @_where(%6, %4, %cst) : (tensor<512x18xi1>, tensor<512x18xf32>, tensor<f32>) -> tensor<512x18xf32>
    %8 = stablehlo.broadcast_in_dim %7, dims = [0, 1] : (tensor<512x18xf32>) -> tensor<512x18x1xf32>
    %9 = stablehlo.broadcast_in_dim %8, dims = [0, 1, 2] : (tensor<512x18x1xf32>) -> tensor<512x18x32xf32>
    %10 = stablehlo.divide %0, %9 : tensor<512x18x32xf32>
    %11 = call @round(%10) : (tensor<512x18x32xf32>) -> tensor<512x18x32xf32>
    %12 = stablehlo.convert %11 : (tensor<512x18x32xf32>) -> tensor<512x18x32xi8>
    %13 = stablehlo.convert %arg0 : (tensor<1536x18x32xui4>) -> tensor<1536x18x32xi8>
    %14 = stablehlo.broadcast_in_dim %c, dims = [] : (tensor<i8>) -> tensor<1536x18x32xi8>
    %15 = stablehlo.subtract %13, %14 : tensor<1536x18x32xi8>
    %16 = stablehlo.dot_general %15, %12, batching_dims = [1] x [1], contracting_dims = [2] x [2] : (tensor<1536x18x32xi8>, tensor<512x18x32xi8>) -> tensor<18x1536x512xi32>
    %17 = stablehlo.convert %16 : (tensor<18x1536x512xi32>) -> tensor<18x1536x512xf32>
    %18 = stablehlo.convert %arg1 : (tensor<1536x18xf16>) -> tensor<1536x18xf32>
    %19 = stablehlo.convert %arg2 : (tensor<1536x18xf16>) -> tensor<1536x18xf32>
    %20 = stablehlo.transpose %17, dims = [2, 1, 0] : (tensor<18x1536x512xf32>) -> tensor<512x1536x18xf32>
    %21 = stablehlo.broadcast_in_dim %4, dims = [0, 2] : (tensor<512x18xf32>) -> tensor<512x1x18xf32>
    %22 = stablehlo.broadcast_in_dim %21, dims = [0, 1, 2] : (tensor<512x1x18xf32>) -> tensor<512x1536x18xf32>
    %23 = stablehlo.multiply %20, %22 : tensor<512x1536x18xf32>
    %24 = stablehlo.reduce(%0 init: %cst_0) applies stablehlo.add across dimensions = [2] : (tensor<512x18x32xf32>, tensor<f32>) -> tensor<512x18xf32>
    %25 = stablehlo.broadcast_in_dim %18, dims = [1, 2] : (tensor<1536x18xf32>) -> tensor<1x1536x18xf32>
    %26 = stablehlo.broadcast_in_dim %25, dims = [0, 1, 2] : (tensor<1x1536x18xf32>) -> tensor<512x1536x18xf32>
    %27 = stablehlo.multiply %26, %23 : tensor<512x1536x18xf32>
    %28 = stablehlo.broadcast_in_dim %19, dims = [1, 2] : (tensor<1536x18xf32>) -> tensor<1x1536x18xf32>
    %29 = stablehlo.broadcast_in_dim %24, dims = [0, 2] : (tensor<512x18xf32>) -> tensor<512x1x18xf32>
    %30 = stablehlo.broadcast_in_dim %28, dims = [0, 1, 2] : (tensor<1x1536x18xf32>) -> tensor<512x1536x18xf32>
    %31 = stablehlo.broadcast_in_dim %29, dims = [0, 1, 2] : (tensor<512x1x18xf32>) -> tensor<512x1536x18xf32>
    %32 = stablehlo.multiply %30, %31 : tensor<512x1536x18xf32>
    %33 = stablehlo.add %27, %32 : tensor<512x1536x18xf32>
    %34 = stablehlo.reduce(%33 init: %cst_0) applies stablehlo.add across dimensions = [2] : (tensor<512x1536x18xf32>, tensor<f32>) -> tensor<512x1536xf32>
    return %34 : tensor<512x1536xf32>
  }
  func.func private @_where(%arg0: tensor<512x18xi1>, %arg1: tensor<512x18xf32>, %arg2: tensor<f32>) -> tensor<512x18xf32> {
    %0 = stablehlo.broadcast_in_dim %arg2, dims = [] : (tensor<f32>) -> tensor<512x18xf32>
    %1 = stablehlo.select %arg0, %arg1, %0 : tensor<512x18xi1>, tensor<512x18xf32>
    return %1 : tensor<512x18xf32>
  }
  func.func private @round(%arg0: tensor<512x18x32xf32>) -> tensor<512x18x32xf32> {
    %0 = stablehlo.round_nearest_even %arg0 : tensor<512x18x32xf32>
    return %0 : tensor<512x18x32xf32>
  }
  util.global private @weight0 = #flow.parameter.named<"model"::"model.layers.0.mlp.up_proj.weight.qweight"> : tensor<1536x18x32xi4>
  util.global private @weight1 = #flow.parameter.named<"model"::"model.layers.0.mlp.up_proj.weight.scale"> : tensor<1536x18xf16>
  util.global private @weight2 = #flow.parameter.named<"model"::"model.layers.0.mlp.up_proj.weight.minimum"> : tensor<1536x18xf16>
  func.func public @main(%arg0: tensor<512x576xf32>) -> (tensor<512x1536xf32>) {
    %h0 = util.global.load @weight0 : tensor<1536x18x32xi4>
    %w0 = stablehlo.bitcast_convert %h0 : (tensor<1536x18x32xi4>) -> tensor<1536x18x32xui4>
    %w1 = util.global.load @weight1 : tensor<1536x18xf16>
    %w2 = util.global.load @weight2 : tensor<1536x18xf16>
    %r:1 = func.call @forward(%w0, %w1, %w2, %arg0) : (tensor<1536x18x32xui4>, tensor<1536x18xf16>, tensor<1536x18xf16>, tensor<512x576xf32>) -> (tensor<512x1536xf32>)
    return %r#0 : tensor<512x1536xf32>
  }
}
