//! The Winograd path of [`PackedConv`]: which layers transform their kernel for Winograd
//! products (and for which tiles), and the forward pass through them (see
//! [`winograd`](super::super::winograd) for the products themselves).

use super::{Act, Buffers, ConvShape, Error, Kernel, MR, PackedConv, Precision, Result, View, WinogradUse, implicit};
use crate::arch::geometry::ConvGeometry;
use crate::kernels::implicit::{all_moderate, all_moderate_scaled};
use crate::kernels::winograd::Winograd;
use crate::kernels::winograd_axis::Tile;

/// The most input or output channels of a convolution that runs as a Winograd product: its
/// transformed kernel is 64/27 times the direct one's size (16.8 MB for 256 channels in and
/// out), and the last stage (512) sees too few voxels to repay the transforms.
pub(crate) const WINOGRAD_CHANNELS: usize = 256;

/// The most input or output channels of a frozen f32 layer whose kernel is transformed for
/// F(4x4x4, 3x3x3): its transformed kernel is 8 times the direct one's size (14 MB for 128
/// channels in and out), which each chunk of tiles streams through the products.
const WINOGRAD_F4_CHANNELS: usize = 128;

/// The fewest 2x2x2 output tiles for which a kernel transformed once runs as a Winograd product.
const WINOGRAD_TILES: usize = 8;

/// The fewest 4x4x4 output tiles for which a frozen layer runs F(4x4x4, 3x3x3) rather than
/// F(2x2x2, 3x3x3): two register tiles of rows (fewer leave most of the product's 12-row tile
/// empty; ResNet3d-18's layer2 on 1x1x16x64x64 has 4 such tiles and ran 10-20% slower).
const WINOGRAD_F4_TILES: usize = 2 * MR;

/// A layer's kernel transformed for Winograd products where its geometry and `winograd` take
/// them, each with the fewest output tiles (its own) for which it runs: F(4x4x4, 3x3x3) first
/// where it applies, then F(2x2x2, 3x3x3). `weight` is `[o, i, taps]`, each output channel
/// times `scale[oc]` if given.
pub(super) fn transforms(
    weight: &[f32],
    [o, i, taps]: [usize; 3],
    scale: Option<&[f32]>,
    g: &ConvGeometry,
    kernel: Kernel,
    precision: Precision,
    winograd: WinogradUse,
) -> Vec<(Winograd, usize)> {
    // Winograd's transforms where asked for: 3x3x3, stride 1, dilation 1, padding within
    // what its padded tiles hold, few enough channels, and a kernel of moderate values (the
    // transform adds and subtracts taps: `all_moderate`; checked last, as it reads the whole
    // kernel).
    let geometry_takes = winograd != WinogradUse::Never
        && g.kernel == [3, 3, 3]
        && g.stride == [1, 1, 1]
        && g.dilation == [1, 1, 1]
        && g.padding.iter().all(|&p| p <= 2)
        && i.max(o) <= WINOGRAD_CHANNELS;
    let takes = geometry_takes
        && (precision == Precision::F32
            || (i.is_multiple_of(2) && kernel.is_avx512() && crate::kernels::bf16::available()))
        && folded_moderate(weight, scale, i * taps);
    // Where the kernel is transformed once, in layers of few enough channels, also for the
    // larger tile, which runs where the output has enough of its tiles (the training ops keep
    // F(2x2x2): no faster there, measured, and closer to the direct product). In f32 in the
    // bf16 network too: its F(2x2x2) products in bf16 took 12.4 ms on layer1's 64 channels
    // (`frozen/layer/conv3d_64x64x3x3x3_16x56x56_bf16`), F(4x4x4) in f32 7.7 ms, and the
    // larger tile's transforms would lose too much in bf16.
    let f4 = geometry_takes
        && winograd == WinogradUse::Kept
        && i.max(o) <= WINOGRAD_F4_CHANNELS
        && (takes || folded_moderate(weight, scale, i * taps));
    let transform = |tile, bf16| Winograd::new(weight, [o, i], scale, kernel, bf16, tile);
    let bf16 = precision == Precision::Bf16;
    let mut transforms = Vec::new();
    if f4 {
        transforms.push((transform(Tile::F4, false), WINOGRAD_F4_TILES));
    }
    match winograd {
        WinogradUse::Kept if takes => transforms.push((transform(Tile::F2, bf16), WINOGRAD_TILES)),
        WinogradUse::PerCall if takes => transforms.push((transform(Tile::F2, bf16), 64)),
        _ => {}
    }
    transforms
}

/// Whether every value of the kernel the products multiply, `weight` (`[o, per_output]`) with
/// output channel `oc` times `scale[oc]`, is moderate ([`all_moderate`]): the weight and the
/// scale each below `2^48` can fold to `2^96`, which Winograd's transforms overflow where the
/// direct product does not (a hostile review's probe: folded `2^67`, inputs `2^47`).
fn folded_moderate(weight: &[f32], scale: Option<&[f32]>, per_output: usize) -> bool {
    match scale {
        None => all_moderate(weight),
        Some(scale) => (weight.chunks(per_output.max(1)).zip(scale)).all(|(row, &s)| all_moderate_scaled(row, s)),
    }
}

impl PackedConv {
    /// Whether a Winograd product of this layer's kernel, transformed per call, pays on `s`.
    #[cfg(feature = "flex")]
    pub(crate) fn winograd_pays(s: &ConvShape) -> bool {
        Tile::F2.tiles(s.batch, s.output) >= 64
    }

    /// The same layer with only its largest Winograd tile, run on any output (one tile or
    /// more): the differential test's way to reach F(4x4x4, 3x3x3) on small random shapes.
    #[cfg(test)]
    pub(crate) fn largest_tile_always(mut self) -> Self {
        self.winograd.truncate(1);
        if let Some((_, fewest)) = self.winograd.first_mut() {
            *fewest = 1;
        }
        self
    }

    /// The same layer without its Winograd kernel: every output by the direct product (the
    /// benches and tests compare the two).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn without_winograd(mut self) -> Self {
        self.winograd.clear();
        self
    }

    /// [`forward`](Self::forward) as a Winograd product: `x` padded to whole tiles (the
    /// layer's) of the output (`s`, checked against `x` and `residual` by the caller). `None`, computing
    /// nothing, where `x` holds an infinity, NaN or a value of `2^48` or more: the transforms'
    /// sums and differences would turn an infinity into NaN, or overflow, where the direct
    /// product gives PyTorch's numbers.
    pub(super) fn forward_winograd(
        &self,
        winograd: &Winograd,
        s: &ConvShape,
        x: View<'_>,
        residual: Option<View<'_>>,
        relu: bool,
        buffers: &Buffers,
    ) -> Result<Option<Act>> {
        let [n, ..] = x.dims;
        let [od, oh, ow] = s.output;
        let oc = s.out_channels;
        let [dp, hp, wp] = winograd.tile().padded_extent(s.output);
        let padded = [n, dp, hp, wp, s.in_channels];
        let mut xp = self.output(padded.iter().product(), s.input_dims(), buffers)?;
        xp.fill(0.0);
        // The copy reads every input value once: whether they are all moderate comes with it.
        let moderate = implicit::copy_padded(s, x, &mut xp, padded, |dst, src| {
            dst.copy_from_slice(src);
            all_moderate(src)
        });
        if !moderate {
            buffers.give(xp);
            return Ok(None);
        }
        // Every value is overwritten.
        let mut out = self.output(n * od * oh * ow * oc, s.input_dims(), buffers)?;
        let out_dims = [n, od, oh, ow, oc];
        let done = winograd.forward(&xp, out_dims, &self.bias, residual.map(|r| r.data), relu, &mut out);
        buffers.give(xp);
        if !done {
            buffers.give(out);
            return Err(Error::InvalidNetwork {
                layer: self.spec.name.conv_path(),
                what: format!("its Winograd kernel does not fit the output {out_dims:?} (channels-last)"),
            });
        }
        Ok(Some(Act {
            data: out,
            dims: out_dims,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{geometry, naive, pack, run, spec, values};
    use super::*;

    /// An input holding +infinity: Winograd's transforms subtract inputs (inf - inf = NaN);
    /// the layer then runs the direct product, which gives +infinity where the window holds
    /// it (positive weights), as PyTorch's convolution does.
    #[test]
    fn infinity_stays_infinity_where_winograd_would_make_nan() {
        let g = geometry([16, 16], 3, 1, 1);
        let dims = [1, 8, 8, 8, 16];
        let mut x = values(8 * 8 * 8 * 16, 5);
        x[((3 * 8 + 4) * 8 + 5) * 16 + 7] = f32::INFINITY;
        let w: Vec<f32> = values(16 * 16 * 27, 6).iter().map(|v| v.abs() + 0.01).collect();
        let layer = pack(g, &w, WinogradUse::Kept);
        assert!(!layer.winograd.is_empty(), "the layer takes Winograd products");
        let got = run(&layer, &x, dims).unwrap().data;
        let direct = run(&layer.clone().without_winograd(), &x, dims).unwrap().data;
        assert!(got.iter().all(|v| !v.is_nan()), "no NaN");
        assert_eq!(got.iter().filter(|v| v.is_infinite()).count(), 27 * 16);
        for (a, b) in got.iter().zip(&direct) {
            assert!(a == b || (a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        // Finite inputs still take the Winograd product (the same numbers up to rounding).
        let finite = values(8 * 8 * 8 * 16, 5);
        let (a, b) = (
            run(&layer, &finite, dims).unwrap().data,
            run(&layer.clone().without_winograd(), &finite, dims).unwrap().data,
        );
        // Within 1e-5 of the sum of the terms' magnitudes (the kernel is positive): the
        // layer's tile is F(4, 3), whose rounding is a few 1e-6 of it.
        let abs: Vec<f32> = finite.iter().map(|v| v.abs()).collect();
        let magnitude = run(&layer.clone().without_winograd(), &abs, dims).unwrap().data;
        let worst = (a.iter().zip(&b).zip(&magnitude))
            .map(|((a, b), m)| (a - b).abs() / (1.0 + m))
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "Winograd and direct agree: {worst:e}");
    }

    /// In the bf16 network a layer of up to 128 channels runs F(4x4x4) in f32 where its output
    /// has enough of those tiles: the f32 layer's numbers, bit for bit; on fewer tiles it runs
    /// F(2x2x2) with bf16 products, within bf16's rounding of the f32 layer.
    #[test]
    fn a_bf16_layer_takes_the_f32_f4_product_where_it_runs() {
        if !(crate::kernels::bf16::available() && Kernel::detect().is_avx512()) {
            return;
        }
        let g = geometry([16, 16], 3, 1, 1);
        let w = values(16 * 16 * 27, 7);
        let packed = |precision| {
            PackedConv::pack(
                spec(g),
                &w,
                None,
                vec![0.0; 16],
                Kernel::detect(),
                precision,
                WinogradUse::Kept,
            )
            .unwrap()
        };
        let (f32_layer, bf16_layer) = (packed(Precision::F32), packed(Precision::Bf16));
        assert_eq!(bf16_layer.winograd.len(), 2, "F(4x4x4) in f32, then F(2x2x2) in bf16");
        // 4 x 4 x 4 output tiles of 4x4x4 (24 or more take F(4x4x4)), then 1 x 2 x 2.
        for (dims, same) in [([1, 16, 16, 16, 16], true), ([1, 4, 8, 8, 16], false)] {
            let x = values(dims.iter().product(), 8);
            let want = run(&f32_layer, &x, dims).unwrap().data;
            let got = run(&bf16_layer, &x, dims).unwrap().data;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got) == bits(&want), same, "{dims:?}");
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 2e-2 * scale, "{dims:?}: {a} vs {b}");
            }
        }
    }

    /// A kernel and a BatchNorm scale each moderate whose product is not (2^34 x 2^33: a
    /// hostile review found F(4x4x4) gave NaN there on inputs of 2^47, where the direct
    /// product is finite) runs the direct product; the same kernel with a small scale still
    /// takes Winograd's.
    #[test]
    fn a_kernel_that_folds_to_a_huge_one_runs_the_direct_product() {
        let g = geometry([16, 16], 3, 1, 1);
        let w = vec![2f32.powi(34); 16 * 16 * 27];
        let packed = |s: f32| match PackedConv::pack(
            spec(g),
            &w,
            Some(&[s; 16]),
            vec![0.0; 16],
            Kernel::detect(),
            Precision::F32,
            WinogradUse::Kept,
        ) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        };
        assert!(packed(2f32.powi(33)).winograd.is_empty());
        let layer = packed(2f32.powi(-30));
        assert!(!layer.winograd.is_empty());
        let dims = [1, 8, 8, 8, 16];
        let x: Vec<f32> = (0..8 * 8 * 8 * 16)
            .map(|k| if k % 3 == 0 { 2f32.powi(47) } else { -1.0 })
            .collect();
        let y = run(&packed(2f32.powi(33)), &x, dims).unwrap().data;
        assert!(
            y.iter().all(|v| v.is_finite()),
            "the direct product's outputs are finite"
        );
    }

    /// Finite inputs near `f32::MAX` (the hostile review's probe: +-3e38, kernel 1e-3): the
    /// Winograd transforms' sums overflowed to infinities and then NaN; the direct product
    /// (and PyTorch) gives finite outputs. Such inputs run the direct product now.
    #[test]
    fn huge_finite_inputs_stay_finite_where_winograd_would_overflow() {
        let g = geometry([16, 16], 3, 1, 1);
        let dims = [1, 8, 8, 8, 16];
        let x: Vec<f32> = (0..8 * 8 * 8 * 16)
            .map(|i| if (i / 7) % 2 == 0 { 3.0e38 } else { -3.0e38 })
            .collect();
        let w = vec![1e-3f32; 16 * 16 * 27];
        let layer = pack(g, &w, WinogradUse::Kept);
        assert!(!layer.winograd.is_empty());
        let got = run(&layer, &x, dims).unwrap().data;
        let want = naive(&x, dims, &w, &g);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!(a.is_finite(), "{a} where the definition gives {b}");
            assert!((f64::from(*a) - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
    }
}
