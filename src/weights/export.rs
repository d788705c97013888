//! ONNX export: the network's plan walked by one more engine, whose activations are the names
//! of ONNX values and whose layers emit nodes.
//!
//! Each layer becomes `Conv` (no bias), `BatchNormalization` (not folded, so that the file
//! holds the parameters bit for bit and reads back through [`Weights::from_file`]), then `Add`
//! (a block's last layer) and `Relu`; replicate depth padding is an `edge` `Pad` before the
//! convolution; MedicalNet's zero-padded shortcut is a strided `Slice` and a channel `Pad`;
//! the head is `GlobalAveragePool`, `Flatten` and `Gemm`. Node names are the layers' own
//! (`layer1.0.conv1`, `layer1.0.bn1`, ...) and every initializer is named as in the crate's
//! state dict (`layer1.0.conv1.weight`, `layer1.0.bn1.running_var`, `fc.weight` as
//! `[classes, features]`), so a file written here is a native 3-D checkpoint too.
//!
//! The file is encoded with onnx-ir's generated ONNX types and rust-protobuf (the protobuf
//! stack the ONNX reader already builds on; no second encoder).

use std::cell::RefCell;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use onnx_ir::{AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use protobuf::{EnumOrUnknown, Message, MessageField};

use crate::arch::geometry::{PoolGeometry, ZeroPadShortcut};
use crate::arch::kinds::DepthPadding;
use crate::arch::plan::{PlanLayer, Site};
use crate::arch::walk::{self, Engine, Tap};
use crate::error::{Error, Result};
use crate::model::engine::ModelLayer;
use crate::model::network::ResNet3d;

/// The ONNX operator set the files use (`Pad` with an input of pads, `Slice` with steps,
/// `BatchNormalization`-15).
pub const ONNX_OPSET: i64 = 17;
/// The IR version of opset 17.
const IR_VERSION: i64 = 8;
/// What a file written here says made it ([`ModelProto::producer_name`]): the reader takes
/// such a file's initializers by name.
pub(crate) const PRODUCER: &str = "resnet3d";

/// The most parameter bytes a file holds: protobuf's 2 GiB, less room for the graph.
const MAX_INLINE: usize = (2 << 30) - (16 << 20);
/// ONNX element types.
pub(super) const FLOAT: i32 = 1;
pub(super) const INT64: i32 = 7;

/// What [`ResNet3d::to_onnx`] writes besides the network's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Also output the stem (after its ReLU, before the max pool) and every stage, as the
    /// graph outputs `stem`, `layer1` .. `layer4` after the logits: what
    /// [`ResNet3d::features`] returns.
    pub stage_outputs: bool,
}

impl ResNet3d {
    /// The network as an ONNX model (opset 17): input `input` `[batch, C, depth, height,
    /// width]` with the batch and the three spatial axes dynamic, output `logits`
    /// `[batch, classes]` (or `features` `[batch, channels]` without a head), and the stages
    /// if `options` asks. Eval mode: BatchNorm uses its running statistics.
    ///
    /// ```
    /// use resnet3d::burn::tensor::Device;
    /// use resnet3d::{OnnxOptions, ResNet3d, ResNet3dConfig};
    ///
    /// let device = Device::flex();
    /// let model = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1).init(&device);
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("r18.onnx");
    /// model.save_onnx(&path, OnnxOptions::default())?;
    /// // The file is a checkpoint too: reading it back gives the same network.
    /// let config = ResNet3dConfig::resnet18().with_width(4).with_in_channels(1);
    /// let again = ResNet3d::from_checkpoint(&path, &config, &device)?;
    /// assert_eq!(again.to_onnx(OnnxOptions::default())?, std::fs::read(&path)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidNetwork`] for a network that [`validate`](Self::validate) refuses;
    /// [`Error::Unsupported`] for parameters beyond protobuf's 2 GiB (no ResNet preset comes
    /// near: a full-width 3-D ResNet-152 holds about 470 MB).
    pub fn to_onnx(&self, options: OnnxOptions) -> Result<Vec<u8>> {
        let plan = self.layers()?;
        let writer = Writer::default();
        let input = Value {
            name: "input".into(),
            channels: self.in_channels(),
        };
        let mut outputs = Vec::new();
        let x = walk::run(&plan, &writer, input, |tap, x| {
            if !options.stage_outputs {
                return Ok(x);
            }
            let name = match tap {
                Tap::Stem => "stem".to_string(),
                Tap::Stage(s) => format!("layer{}", s + 1),
            };
            writer.node("Identity", &name, vec![x.name.clone()], &name, vec![]);
            outputs.push((name.clone(), x.channels));
            Ok(Value { name, ..x })
        })?;
        writer.node("GlobalAveragePool", "avgpool", vec![x.name], "avgpool", vec![]);
        writer.node(
            "Flatten",
            "flatten",
            vec!["avgpool".into()],
            "pooled",
            vec![ints_attr("axis", &[1], true)],
        );
        let (output, width) = match &self.fc {
            Some(fc) => {
                // Burn's Linear holds [features, classes]; Gemm with transB=1 and the
                // state dict both want PyTorch's [classes, features].
                let [features, classes] = fc.weight.dims();
                let weight = fc.weight.val().transpose();
                writer.initializer("fc.weight", &[classes, features], floats("fc.weight", weight)?);
                let mut inputs = vec!["pooled".to_string(), "fc.weight".into()];
                if let Some(bias) = &fc.bias {
                    writer.initializer("fc.bias", &[classes], floats("fc.bias", bias.val())?);
                    inputs.push("fc.bias".into());
                }
                writer.node("Gemm", "fc", inputs, "logits", vec![ints_attr("transB", &[1], true)]);
                ("logits", classes)
            }
            None => {
                writer.node("Identity", "features", vec!["pooled".into()], "features", vec![]);
                ("features", x.channels)
            }
        };
        let mut graph = writer.finish();
        // Protobuf messages stop at 2 GiB (ONNX's external data is not written here).
        let bytes: usize = graph.initializer.iter().map(|t| t.raw_data.len()).sum();
        if bytes > MAX_INLINE {
            return Err(Error::Unsupported {
                what: format!(
                    "an ONNX file of {} MB of parameters: protobuf holds at most 2 GiB, and external data is not written",
                    bytes >> 20
                ),
            });
        }
        graph.name = "resnet3d".into();
        graph.input.push(value_info(
            "input",
            &[
                Dim::Batch,
                Dim::Fixed(self.in_channels()),
                Dim::Named("depth"),
                Dim::Named("height"),
                Dim::Named("width"),
            ],
        ));
        graph.output.push(value_info(output, &[Dim::Batch, Dim::Fixed(width)]));
        for (name, channels) in outputs {
            graph.output.push(value_info(
                &name,
                &[
                    Dim::Batch,
                    Dim::Fixed(channels),
                    Dim::Unknown,
                    Dim::Unknown,
                    Dim::Unknown,
                ],
            ));
        }
        let mut model = ModelProto::new();
        model.ir_version = IR_VERSION;
        model.producer_name = PRODUCER.into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        model.opset_import.push(Default::default());
        if let Some(opset) = model.opset_import.last_mut() {
            opset.version = ONNX_OPSET;
        }
        model.graph = MessageField::some(graph);
        model.write_to_bytes().map_err(|err| Error::Unsupported {
            what: format!("the ONNX model could not be encoded: {err}"),
        })
    }

    /// [`to_onnx`](Self::to_onnx) written to `path` (replacing a file there, whole: the
    /// bytes go to a new file beside it, renamed over it when complete).
    ///
    /// # Errors
    /// Those of [`to_onnx`](Self::to_onnx), and [`Error::Io`] naming the path.
    pub fn save_onnx(&self, path: impl AsRef<Path>, options: OnnxOptions) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_onnx(options)?;
        // Written beside the target under a new name, then renamed over it: a reader never
        // sees half a file, and an interrupted write leaves the old one.
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{}.tmp", std::process::id()));
        let temporary = path.with_file_name(name);
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let written = std::fs::File::create_new(&temporary)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(source));
        }
        Ok(())
    }
}

/// An activation: the ONNX value's name and its channels.
#[derive(Debug, Clone)]
struct Value {
    name: String,
    channels: usize,
}

/// The graph being written: nodes and initializers, in the order the walk makes them.
#[derive(Default)]
struct Writer<'a> {
    graph: RefCell<GraphProto>,
    layers: std::marker::PhantomData<&'a ()>,
}

impl Writer<'_> {
    fn node(&self, op: &str, name: &str, inputs: Vec<String>, output: &str, attributes: Vec<AttributeProto>) {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = name.into();
        node.input = inputs;
        node.output = vec![output.into()];
        node.attribute = attributes;
        self.graph.borrow_mut().node.push(node);
    }

    fn initializer(&self, name: &str, dims: &[usize], values: Vec<f32>) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims.iter().map(|&d| d as i64).collect(), FLOAT, raw);
    }

    fn int64s(&self, name: &str, values: &[i64]) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, vec![values.len() as i64], INT64, raw);
    }

    /// A `Pad` node `output` of `input`, its pads (begins, then ends, per axis) the int64
    /// initializer `pads_name`.
    fn pad(&self, output: &str, input: String, pads_name: &str, pads: [i64; 10], mode: &str) {
        self.int64s(pads_name, &pads);
        self.node(
            "Pad",
            output,
            vec![input, pads_name.to_string()],
            output,
            vec![string_attr("mode", mode)],
        );
    }

    fn tensor(&self, name: &str, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = data_type;
        t.dims = dims;
        t.raw_data = raw.into();
        self.graph.borrow_mut().initializer.push(t);
    }

    fn finish(self) -> GraphProto {
        self.graph.into_inner()
    }
}

impl<'a> Engine for Writer<'a> {
    type Layer = ModelLayer<'a>;
    type Act = Value;

    fn layer(&self, layer: &ModelLayer<'a>, x: &Value, residual: Option<&Value>) -> Result<Value> {
        let spec = layer.spec();
        let (conv, norm) = (spec.name.conv_path(), spec.name.norm_path());
        let g = spec.geometry;
        let mut padding = g.padding;
        let mut input = x.name.clone();
        if g.depth_padding == DepthPadding::Replicate && padding[0] > 0 {
            // PyTorch's F.pad(mode="replicate") on depth, then the convolution without it.
            let p = padding[0] as i64;
            let padded = format!("{conv}.depth_padded");
            self.pad(
                &padded,
                input,
                &format!("{conv}.depth_pads"),
                [0, 0, p, 0, 0, 0, 0, p, 0, 0],
                "edge",
            );
            input = padded;
            padding[0] = 0;
        }
        let weight = format!("{conv}.weight");
        self.initializer(&weight, &g.weight_shape(), floats(&weight, layer.conv.weight.val())?);
        let axes = |v: [usize; 3]| v.map(|a| a as i64);
        let pads = [padding, padding]
            .concat()
            .iter()
            .map(|&p| p as i64)
            .collect::<Vec<_>>();
        self.node(
            "Conv",
            &conv,
            vec![input, format!("{conv}.weight")],
            &conv,
            vec![
                ints_attr("kernel_shape", &axes(g.kernel), false),
                ints_attr("strides", &axes(g.stride), false),
                ints_attr("pads", &pads, false),
                ints_attr("dilations", &axes(g.dilation), false),
                ints_attr("group", &[1], true),
            ],
        );
        let bn = layer.bn;
        let c = [g.out_channels];
        for (part, value) in [
            ("weight", bn.gamma.val()),
            ("bias", bn.beta.val()),
            ("running_mean", bn.running_mean.value()),
            ("running_var", bn.running_var.value()),
        ] {
            let name = format!("{norm}.{part}");
            self.initializer(&name, &c, floats(&name, value)?);
        }
        let mut epsilon = AttributeProto::new();
        epsilon.name = "epsilon".into();
        epsilon.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
        epsilon.f = bn.epsilon as f32;
        let inputs = ["", ".weight", ".bias", ".running_mean", ".running_var"].map(|s| {
            if s.is_empty() {
                conv.clone()
            } else {
                format!("{norm}{s}")
            }
        });
        self.node("BatchNormalization", &norm, inputs.to_vec(), &norm, vec![epsilon]);
        let mut out = norm.clone();
        if let Some(residual) = residual {
            let sum = format!("{}.add", spec.name.site.path("residual"));
            self.node("Add", &sum, vec![out, residual.name.clone()], &sum, vec![]);
            out = sum;
        }
        if spec.after.relu() {
            let relu = format!("{norm}.relu");
            self.node("Relu", &relu, vec![out], &relu, vec![]);
            out = relu;
        }
        Ok(Value {
            name: out,
            channels: g.out_channels,
        })
    }

    fn max_pool(&self, pool: &PoolGeometry, x: Value) -> Result<Value> {
        let axes = |v: [usize; 3]| v.map(|a| a as i64);
        let pads = [pool.padding, pool.padding]
            .concat()
            .iter()
            .map(|&p| p as i64)
            .collect::<Vec<_>>();
        self.node(
            "MaxPool",
            "maxpool",
            vec![x.name],
            "maxpool",
            vec![
                ints_attr("kernel_shape", &axes(pool.kernel), false),
                ints_attr("strides", &axes(pool.stride), false),
                ints_attr("pads", &pads, false),
            ],
        );
        Ok(Value {
            name: "maxpool".into(),
            ..x
        })
    }

    fn zero_pad(&self, shortcut: &ZeroPadShortcut, x: &Value, site: Site) -> Result<Value> {
        // Every stride-th voxel from the first (PyTorch's avg_pool3d(x, 1, stride)), then
        // zero channels appended up to the block's width.
        let base = site.path("shortcut");
        let strided = format!("{base}.strided");
        let constants = [
            ("starts", [0i64; 3]),
            ("ends", [i64::MAX; 3]),
            ("axes", [2, 3, 4]),
            ("steps", shortcut.stride.map(|s| s as i64)),
        ];
        for (what, values) in &constants {
            self.int64s(&format!("{base}.{what}"), values);
        }
        let inputs = std::iter::once(x.name.clone())
            .chain(constants.iter().map(|(what, _)| format!("{base}.{what}")))
            .collect();
        self.node("Slice", &strided, inputs, &strided, vec![]);
        let extra = shortcut
            .out_channels
            .checked_sub(x.channels)
            .ok_or_else(|| Error::InvalidNetwork {
                layer: format!("{site} (zero-padded shortcut)"),
                what: format!(
                    "{} input channels for {} output channels: channels are only added",
                    x.channels, shortcut.out_channels
                ),
            })?;
        self.pad(
            &base,
            strided,
            &format!("{base}.pads"),
            [0, 0, 0, 0, 0, 0, extra as i64, 0, 0, 0],
            "constant",
        );
        Ok(Value {
            name: base,
            channels: shortcut.out_channels,
        })
    }
}

/// A tensor's values as `f32`, row-major.
fn floats<const D: usize>(name: &str, t: Tensor<D>) -> Result<Vec<f32>> {
    let data: TensorData = t.into_data();
    let dtype = data.dtype();
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|_| Error::UnsupportedDType {
            name: name.into(),
            dtype: format!("{dtype:?} (exported as float32)"),
        })
}

/// An `INTS` attribute (or `INT` when `single`).
fn ints_attr(name: &str, values: &[i64], single: bool) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    if single {
        a.type_ = EnumOrUnknown::new(AttributeType::INT);
        a.i = values[0];
    } else {
        a.type_ = EnumOrUnknown::new(AttributeType::INTS);
        a.ints = values.to_vec();
    }
    a
}

fn string_attr(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::STRING);
    a.s = value.as_bytes().to_vec().into();
    a
}

/// An axis of a graph input's or output's shape.
enum Dim {
    Batch,
    Fixed(usize),
    Named(&'static str),
    Unknown,
}

/// A float tensor's name and shape, as the graph declares its inputs and outputs.
fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    let tensor = info.type_.mut_or_insert_default().mut_tensor_type();
    tensor.elem_type = FLOAT;
    let shape = tensor.shape.mut_or_insert_default();
    for dim in dims {
        shape.dim.push(Default::default());
        let Some(d) = shape.dim.last_mut() else { continue };
        match dim {
            Dim::Batch => d.set_dim_param("batch".into()),
            Dim::Fixed(n) => d.set_dim_value(*n as i64),
            Dim::Named(axis) => d.set_dim_param((*axis).into()),
            Dim::Unknown => {}
        }
    }
    info
}
