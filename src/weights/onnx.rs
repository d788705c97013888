//! ONNX files through Burn's run-time ONNX parser (`onnx-ir`), mapped onto torchvision's
//! names by the graph's structure alone.
//!
//! Initializer names, node names and node order vary between exporters (`conv1.weight`,
//! `onnx::Conv_193`, anything after an optimiser) and are never looked at. The walk follows
//! the data from the graph input: the stem (Conv, BatchNorm unless fused, Relu, MaxPool), then
//! residual units found from their `Add` nodes (main branch: the path through a Relu; the
//! shortcut: a lone Conv and BatchNorm, or the unit's input itself), then the global pool and
//! the linear head. A new stage starts at every unit with a projection shortcut.
//!
//! BatchNorm that an exporter fused into a convolution is mapped exactly: the convolution
//! keeps the fused kernel and the BatchNorm becomes the identity in eval mode
//! (`gamma = sqrt(1 + eps)`, `beta` = the fused bias, mean 0, variance 1).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use onnx_ir::{ArgType, Argument, Node, OnnxGraph, OnnxGraphBuilder};

use super::format::{WeightTensor, io_error};
use crate::error::{Error, Result};

/// The epsilon of the crate's BatchNorm layers (PyTorch's default).
const EPSILON: f32 = 1e-5;

/// What the graph says beyond its tensors.
#[derive(Debug, Clone, Default)]
pub(crate) struct OnnxFacts {
    /// BatchNorm layers that were fused into their convolution by the exporter.
    pub fused_batch_norms: usize,
    /// Whether bottlenecks stride their first 1x1 convolution (ResNet v1).
    pub stride_in_1x1: Option<bool>,
}

pub(super) fn read(path: &Path) -> Result<(Vec<(String, WeightTensor)>, OnnxFacts)> {
    let graph = parse(path)?;
    Mapper::new(&graph, path).map()
}

/// Parses with `onnx-ir`, which must not take the process down on a hostile file: a panic
/// inside it becomes [`Error::Corrupt`].
fn parse(path: &Path) -> Result<OnnxGraph> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        format: "ONNX",
        reason,
    };
    let parsed = catch_unwind(AssertUnwindSafe(|| OnnxGraphBuilder::new().parse_file(path)));
    match parsed {
        Ok(Ok(graph)) => Ok(graph),
        Ok(Err(onnx_ir::Error::Io { error, .. })) => Err(io_error(path, error)),
        Ok(Err(err)) => Err(corrupt(err.to_string())),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the parser failed");
            Err(corrupt(format!("the ONNX parser gave up: {message}")))
        }
    }
}

/// A tensor with its shape, as the mapping handles it.
struct Value {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// One convolution of the graph, with the BatchNorm that follows it (if not fused).
struct ConvUnit<'g> {
    conv: &'g onnx_ir::conv2d::Conv2dNode,
    bn: Option<&'g onnx_ir::batch_norm::BatchNormalizationNode>,
    /// The tensor after the BatchNorm (or after the convolution when fused).
    output: &'g str,
}

/// A residual unit: the main branch's convolutions and the optional projection shortcut.
struct Unit<'g> {
    main: Vec<ConvUnit<'g>>,
    shortcut: Option<ConvUnit<'g>>,
}

struct Mapper<'g> {
    graph: &'g OnnxGraph,
    path: &'g Path,
    /// Which node produces a value.
    producer: HashMap<&'g str, usize>,
    /// Which nodes read a value.
    consumers: HashMap<&'g str, Vec<usize>>,
    out: Vec<(String, WeightTensor)>,
    facts: OnnxFacts,
}

impl<'g> Mapper<'g> {
    fn new(graph: &'g OnnxGraph, path: &'g Path) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            for output in node.outputs() {
                producer.insert(output.name.as_str(), i);
            }
            for input in node.inputs() {
                if !input.name.is_empty() {
                    consumers.entry(input.name.as_str()).or_default().push(i);
                }
            }
        }
        Self {
            graph,
            path,
            producer,
            consumers,
            out: Vec::new(),
            facts: OnnxFacts::default(),
        }
    }

    fn map(mut self) -> Result<(Vec<(String, WeightTensor)>, OnnxFacts)> {
        if self.graph.nodes.is_empty() {
            return Err(self.corrupt("the file holds no graph nodes (empty or truncated)".into()));
        }
        let input = self
            .graph
            .inputs
            .iter()
            .find(|arg| arg.value().is_none())
            .ok_or_else(|| unsupported("the graph has no input"))?;

        // The stem: Conv, BatchNorm (unless fused), Relu, MaxPool.
        let stem = self.conv_unit(&input.name, "the graph input")?;
        if let Some(why) = conv_mismatch(stem.conv, [7, 7], 2, 3) {
            return Err(not_a_resnet(format!("the first {why}")));
        }
        let relu = self.only_consumer(stem.output, "the stem")?;
        let Node::Relu(relu) = relu else {
            // Pre-activation ResNets pool the bare convolution and normalise inside each unit.
            if let Node::MaxPool2d(pool) = relu
                && self
                    .readers(out(&pool.outputs))
                    .iter()
                    .any(|n| matches!(n, Node::BatchNormalization(_)))
            {
                return Err(unsupported(
                    "pre-activation ResNet (v2) is not supported: the units start with BatchNorm",
                ));
            }
            return Err(not_a_resnet(format!(
                "the stem is followed by {}, not Relu",
                describe(relu)
            )));
        };
        let pool = self.only_consumer(out(&relu.outputs), "the stem's Relu")?;
        let Node::MaxPool2d(pool) = pool else {
            return Err(not_a_resnet(format!(
                "the stem is followed by {}, not MaxPool",
                describe(pool)
            )));
        };
        let c = &pool.config;
        if c.kernel_size != [3, 3] || c.strides != [2, 2] || c.dilation != [1, 1] || c.ceil_mode {
            return Err(unsupported(format!(
                "the stem's max pool is {:?}, not torchvision's 3x3 stride 2",
                c
            )));
        }
        self.emit_conv("conv1", "bn1", &stem)?;

        // The residual units, stage by stage.
        let mut x: &'g str = out(&pool.outputs);
        let mut stages: Vec<Vec<Unit<'g>>> = Vec::new();
        while let Some(unit) = self.unit(x)? {
            if stages.is_empty() || unit.1.shortcut.is_some() {
                stages.push(Vec::new());
            }
            x = unit.0;
            if let Some(stage) = stages.last_mut() {
                stage.push(unit.1);
            }
        }
        if stages.len() != 4 {
            return Err(not_a_resnet(format!(
                "found {} stage(s) of residual units ({:?} units), a ResNet has 4",
                stages.len(),
                stages.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let main_convs = stages[0][0].main.len();
        let mut stride_in_1x1 = None;
        for (s, stage) in stages.iter().enumerate() {
            for (b, unit) in stage.iter().enumerate() {
                let name = format!("layer{}.{b}", s + 1);
                if unit.main.len() != main_convs {
                    return Err(not_a_resnet(format!(
                        "{name} has {} convolutions, layer1.0 has {main_convs}",
                        unit.main.len()
                    )));
                }
                let strided: Vec<usize> = unit
                    .main
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| u.conv.config.stride != [1, 1])
                    .map(|(k, _)| k)
                    .collect();
                if main_convs == 3 && strided.len() == 1 {
                    let in_1x1 = strided[0] == 0;
                    if *stride_in_1x1.get_or_insert(in_1x1) != in_1x1 {
                        return Err(unsupported(format!(
                            "{name} strides another convolution than earlier bottlenecks"
                        )));
                    }
                }
                for (k, conv) in unit.main.iter().enumerate() {
                    self.emit_conv(&format!("{name}.conv{}", k + 1), &format!("{name}.bn{}", k + 1), conv)?;
                }
                if let Some(shortcut) = &unit.shortcut {
                    self.emit_conv(
                        &format!("{name}.downsample.0"),
                        &format!("{name}.downsample.1"),
                        shortcut,
                    )?;
                }
            }
        }
        self.facts.stride_in_1x1 = Some(stride_in_1x1.unwrap_or(false));
        self.head(x)?;
        Ok((self.out, self.facts))
    }

    /// The residual unit reading `x`: `(its output, the unit)`, or `None` at the global pool.
    fn unit(&self, x: &'g str) -> Result<Option<(&'g str, Unit<'g>)>> {
        let readers = self.readers(x);
        if readers
            .iter()
            .any(|n| matches!(n, Node::GlobalAveragePool(_) | Node::ReduceMean(_)))
        {
            return Ok(None);
        }
        if let Some(bn) = readers.iter().find(|n| matches!(n, Node::BatchNormalization(_))) {
            return Err(unsupported(format!(
                "pre-activation ResNet (v2) is not supported: BatchNorm {} reads a residual unit's input",
                describe(bn)
            )));
        }
        let mut main = None;
        let mut shortcut = None;
        for reader in &readers {
            let Node::Conv2d(_) = reader else {
                if matches!(reader, Node::Add(_)) {
                    continue; // the identity shortcut
                }
                return Err(not_a_resnet(format!(
                    "{} reads a residual unit's input",
                    describe(reader)
                )));
            };
            let first = self.conv_unit_at(reader)?;
            match self.only_consumer(first.output, "a convolution")? {
                Node::Relu(_) => main = Some(self.main_branch(first)?),
                Node::Add(_) => shortcut = Some(first),
                other => return Err(not_a_resnet(format!("{} follows a convolution", describe(other)))),
            }
        }
        let Some((main, add)) = main else {
            let last = readers
                .first()
                .map(|n| describe(n))
                .unwrap_or_else(|| "the previous unit".into());
            return Err(not_a_resnet(format!("no residual Add after node {last}")));
        };
        // The Add joins the main branch with the shortcut or with the unit's input itself.
        let other = add
            .inputs
            .iter()
            .map(|a| a.name.as_str())
            .find(|n| *n != main.last().map_or("", |u| u.output));
        let expected = shortcut.as_ref().map_or(x, |s| s.output);
        if other != Some(expected) {
            return Err(not_a_resnet(format!(
                "the residual Add {} does not join the unit's branches",
                add.name
            )));
        }
        if let Some(shortcut) = &shortcut
            && let Some(why) = conv_mismatch(shortcut.conv, [1, 1], shortcut.conv.config.stride[0], 0)
        {
            return Err(unsupported(format!("shortcut {why}")));
        }
        let relu = self.only_consumer(out(&add.outputs), "a residual Add")?;
        let Node::Relu(relu) = relu else {
            return Err(not_a_resnet(format!(
                "the residual Add {} is followed by {}, not Relu",
                add.name,
                describe(relu)
            )));
        };
        Ok(Some((out(&relu.outputs), Unit { main, shortcut })))
    }

    /// Follows the main branch from its first convolution to the residual Add.
    fn main_branch(&self, first: ConvUnit<'g>) -> Result<(Vec<ConvUnit<'g>>, &'g onnx_ir::arithmetic::AddNode)> {
        let mut convs = vec![first];
        let add = loop {
            let last = convs.last().map_or("", |u| u.output);
            match self.only_consumer(last, "a convolution")? {
                Node::Add(add) => break add,
                Node::Relu(relu) => {
                    let next = self.only_consumer(out(&relu.outputs), "a Relu")?;
                    convs.push(self.conv_unit_at(next)?);
                }
                other => return Err(not_a_resnet(format!("{} inside a residual unit", describe(other)))),
            }
            if convs.len() > 3 {
                return Err(not_a_resnet("a residual branch with more than 3 convolutions".into()));
            }
        };
        for (k, unit) in convs.iter().enumerate() {
            // Basic blocks: 3x3, 3x3. Bottlenecks: 1x1, 3x3, 1x1.
            let (kernel, padding) = match (convs.len(), k) {
                (3, 0) | (3, 2) => ([1, 1], 0),
                _ => ([3, 3], 1),
            };
            if let Some(why) = conv_mismatch(unit.conv, kernel, unit.conv.config.stride[0], padding) {
                return Err(unsupported(format!("residual branch {why}")));
            }
        }
        Ok((convs, add))
    }

    /// The convolution reading `x` (its only reader), with its BatchNorm.
    fn conv_unit(&self, x: &str, what: &str) -> Result<ConvUnit<'g>> {
        let node = self.only_consumer(x, what)?;
        self.conv_unit_at(node)
    }

    fn conv_unit_at(&self, node: &'g Node) -> Result<ConvUnit<'g>> {
        let Node::Conv2d(conv) = node else {
            return Err(not_a_resnet(format!(
                "expected a convolution, found {}",
                describe(node)
            )));
        };
        if conv.config.groups != 1 {
            return Err(unsupported(format!(
                "grouped convolution ({} groups) at node {}: ResNeXt, wide grouped and MobileNet-style networks are not ResNets of torchvision's layout",
                conv.config.groups, conv.name
            )));
        }
        let output = out(&conv.outputs);
        match self.readers(output).as_slice() {
            [Node::BatchNormalization(bn)] => Ok(ConvUnit {
                conv,
                bn: Some(bn),
                output: out(&bn.outputs),
            }),
            _ => Ok(ConvUnit { conv, bn: None, output }),
        }
    }

    /// Writes a convolution and its BatchNorm under torchvision's names.
    fn emit_conv(&mut self, conv_name: &str, bn_name: &str, unit: &ConvUnit<'g>) -> Result<()> {
        let weight = self.static_value(input(&unit.conv.inputs, 1, conv_name)?, conv_name)?;
        // Every size below comes from the kernel's values, never from a shape alone: a kernel
        // with an empty extent could claim any number of channels.
        if weight.shape.len() != 4 || weight.shape.contains(&0) {
            return Err(self.corrupt(format!(
                "{conv_name}: kernel of shape {:?}; a convolution's kernel is [out, in, h, w] with every extent at least 1",
                weight.shape
            )));
        }
        let channels = weight.shape[0];
        let bias = match unit
            .conv
            .inputs
            .get(2)
            .filter(|a| !a.name.is_empty() || a.value().is_some())
        {
            Some(arg) => Some(self.evaluate(arg, conv_name)?),
            None => None,
        };
        if let Some(bias) = &bias
            && bias.data.len() != channels
        {
            return Err(self.corrupt(format!(
                "{conv_name}: bias of {} values for {channels} channels",
                bias.data.len()
            )));
        }
        self.push(format!("{conv_name}.weight"), weight);
        let bias = bias.map(|b| b.data).unwrap_or_else(|| vec![0.0; channels]);
        let (gamma, beta, mean, var) = match unit.bn {
            Some(bn) => {
                let epsilon = match &bn.config {
                    onnx_ir::batch_norm::BatchNormConfig::Static(c) => c.epsilon,
                    onnx_ir::batch_norm::BatchNormConfig::Runtime(c) => c.epsilon,
                } as f32;
                let [gamma, beta, mean, var] =
                    [1, 2, 3, 4].map(|i| bn.inputs.get(i).map(|arg| self.static_value(arg, bn_name)));
                let mut params = Vec::new();
                for p in [gamma, beta, mean, var] {
                    let p = p.ok_or_else(|| self.corrupt(format!("{bn_name}: BatchNorm with missing inputs")))??;
                    if p.data.len() != channels {
                        return Err(self.corrupt(format!("{bn_name}: {} values for {channels} channels", p.data.len())));
                    }
                    params.push(p.data);
                }
                let [gamma, beta, mut mean, mut var] =
                    <[Vec<f32>; 4]>::try_from(params).map_err(|_| self.corrupt(bn_name.into()))?;
                // A conv bias before the BatchNorm shifts the mean: BN(y + b) uses mean - b.
                mean.iter_mut().zip(&bias).for_each(|(m, b)| *m -= b);
                // Another epsilon than ours moves into the variance: var + eps' = (var + eps' - eps) + eps.
                var.iter_mut().for_each(|v| *v += epsilon - EPSILON);
                (gamma, beta, mean, var)
            }
            None => {
                // Fused: the identity BatchNorm in eval mode, plus the fused bias.
                self.facts.fused_batch_norms += 1;
                (
                    vec![(1.0 + EPSILON).sqrt(); channels],
                    bias,
                    vec![0.0; channels],
                    vec![1.0; channels],
                )
            }
        };
        for (suffix, data) in [
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            self.push(
                format!("{bn_name}.{suffix}"),
                Value {
                    shape: vec![channels],
                    data,
                },
            );
        }
        Ok(())
    }

    /// The global pool and the linear head after the last unit.
    fn head(&mut self, x: &'g str) -> Result<()> {
        let pool = self.only_consumer(x, "the last residual unit")?;
        match pool {
            Node::GlobalAveragePool(_) => {}
            Node::ReduceMean(mean) => {
                let spatial = matches!(&mean.config.axes, onnx_ir::reduce::ReduceAxes::Static(axes) if axes == &[2, 3]);
                if !spatial {
                    return Err(unsupported(format!(
                        "ReduceMean {} over {:?}, not the spatial axes",
                        mean.name, mean.config.axes
                    )));
                }
            }
            other => {
                return Err(not_a_resnet(format!(
                    "{} after the last unit, not a global average pool",
                    describe(other)
                )));
            }
        }
        let mut y = out(pool.outputs());
        loop {
            let readers = self.readers(y);
            let [node] = readers.as_slice() else {
                return match readers.len() {
                    0 => Ok(()), // a headless export: features only
                    _ => Err(unsupported("the pooled features feed several nodes")),
                };
            };
            match node {
                Node::Flatten(_) | Node::Reshape(_) | Node::Identity(_) => y = out(node.outputs()),
                Node::Linear(linear) => {
                    let weight = self.static_value(input(&linear.inputs, 1, "fc")?, "fc")?;
                    let [a, b] = weight.shape[..] else {
                        return Err(self.corrupt(format!("fc: weight of shape {:?}", weight.shape)));
                    };
                    if a == 0 || b == 0 {
                        return Err(self.corrupt(format!(
                            "fc: weight of shape {:?}; a linear head needs at least one feature and one class",
                            weight.shape
                        )));
                    }
                    // PyTorch's layout is [classes, features]; a MatMul holds [features, classes].
                    let weight = if linear.config.transpose_weight {
                        weight
                    } else {
                        let mut t = vec![0.0; weight.data.len()];
                        for (i, row) in weight.data.chunks_exact(b).enumerate() {
                            row.iter().enumerate().for_each(|(j, v)| t[j * a + i] = *v);
                        }
                        Value {
                            shape: vec![b, a],
                            data: t,
                        }
                    };
                    let classes = weight.shape[0];
                    let bias = match linear
                        .inputs
                        .get(2)
                        .filter(|a| !a.name.is_empty() || a.value().is_some())
                    {
                        Some(arg) => self.evaluate(arg, "fc")?,
                        None => Value {
                            shape: vec![classes],
                            data: vec![0.0; classes],
                        },
                    };
                    self.push("fc.weight".into(), weight);
                    self.push("fc.bias".into(), bias);
                    return Ok(());
                }
                other => {
                    return Err(unsupported(format!(
                        "{} in the head; expected a linear layer",
                        describe(other)
                    )));
                }
            }
        }
    }

    fn push(&mut self, name: String, value: Value) {
        self.out.push((
            name,
            WeightTensor {
                shape: value.shape,
                values: value.data,
            },
        ));
    }

    fn readers(&self, value: &str) -> Vec<&'g Node> {
        let graph: &'g OnnxGraph = self.graph;
        self.consumers
            .get(value)
            .map(|ids| ids.iter().map(|&i| &graph.nodes[i]).collect())
            .unwrap_or_default()
    }

    fn only_consumer(&self, value: &str, what: &str) -> Result<&'g Node> {
        match self.readers(value).as_slice() {
            [one] => Ok(one),
            [] => Err(not_a_resnet(format!("nothing reads the output of {what}"))),
            many => Err(not_a_resnet(format!(
                "the output of {what} feeds {} nodes ({}), where a ResNet has one",
                many.len(),
                many.iter().map(|n| describe(n)).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// A weight stored in the file.
    fn static_value(&self, arg: &Argument, owner: &str) -> Result<Value> {
        match arg.value() {
            Some(data) => self.to_value(data, owner),
            None => self.evaluate(arg, owner),
        }
    }

    /// A value computed from constants only, as unoptimised exports write a zero bias
    /// (`Expand(CastLike(0), Shape(weight)[0:1])`).
    fn evaluate(&self, arg: &Argument, owner: &str) -> Result<Value> {
        self.evaluate_at(arg, owner, 0)
    }

    /// [`evaluate`](Self::evaluate) `depth` nodes down the expression: a crafted chain of
    /// casts must not exhaust the stack.
    fn evaluate_at(&self, arg: &Argument, owner: &str, depth: usize) -> Result<Value> {
        if let Some(data) = arg.value() {
            return self.to_value(data, owner);
        }
        if depth >= MAX_EXPRESSION_DEPTH {
            return Err(unsupported(format!(
                "{owner}: `{}` is computed by more than {MAX_EXPRESSION_DEPTH} nested nodes; exporters write a constant bias in at most a few",
                arg.name
            )));
        }
        let evaluate = |arg: &Argument| self.evaluate_at(arg, owner, depth + 1);
        let node = self
            .producer
            .get(arg.name.as_str())
            .map(|&i| &self.graph.nodes[i])
            .ok_or_else(|| unsupported(format!("{owner}: `{}` is a run-time input, not a weight", arg.name)))?;
        match node {
            Node::Identity(n) => evaluate(input(&n.inputs, 0, owner)?),
            Node::Cast(n) => evaluate(input(&n.inputs, 0, owner)?),
            Node::CastLike(n) => evaluate(input(&n.inputs, 0, owner)?),
            Node::Shape(n) => {
                let source = input(&n.inputs, 0, owner)?;
                let shape = match source.value() {
                    Some(data) => data.shape().to_vec(),
                    None => static_shape(&source.ty)
                        .ok_or_else(|| unsupported(format!("{owner}: the shape of `{}` is not known", source.name)))?,
                };
                let (start, end) = (n.config.start.min(shape.len()), n.config.end.min(shape.len()));
                let dims: Vec<f32> = shape[start..end.max(start)].iter().map(|&d| d as f32).collect();
                Ok(Value {
                    shape: vec![dims.len()],
                    data: dims,
                })
            }
            Node::Expand(n) => {
                let value = evaluate(input(&n.inputs, 0, owner)?)?;
                let target: Vec<usize> = match &n.config {
                    onnx_ir::expand::ExpandConfig::Static(shape) => shape.iter().map(|&d| d.max(0) as usize).collect(),
                    onnx_ir::expand::ExpandConfig::Runtime(_) => evaluate(input(&n.inputs, 1, owner)?)?
                        .data
                        .iter()
                        .map(|&d| d.max(0.0) as usize)
                        .collect(),
                };
                expand(value, &target).ok_or_else(|| {
                    self.corrupt(format!(
                        "{owner}: Expand {} cannot broadcast to {target:?} (at most {MAX_EXPANDED} values)",
                        n.name
                    ))
                })
            }
            other => Err(unsupported(format!(
                "{owner}: computed by {}, which is not a constant expression",
                describe(other)
            ))),
        }
    }

    fn to_value(&self, data: onnx_ir::TensorData, owner: &str) -> Result<Value> {
        let shape = data.shape().to_vec();
        let values = data
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|err| self.corrupt(format!("{owner}: tensor data unreadable: {err:?}")))?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(self.corrupt(format!("{owner}: {} values for shape {shape:?}", values.len())));
        }
        Ok(Value { shape, data: values })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            format: "ONNX",
            reason,
        }
    }
}

/// The most values an `Expand` may make: far more than any bias (one value per channel), and
/// small enough that a shape written in a crafted file cannot exhaust memory.
const MAX_EXPANDED: usize = 1 << 20;

/// The deepest constant expression [`Mapper::evaluate`] follows.
const MAX_EXPRESSION_DEPTH: usize = 32;

/// Broadcasts a scalar or a vector to `target` (the only broadcasts a bias needs); `None`
/// when it cannot, or would make more than [`MAX_EXPANDED`] values.
fn expand(input: Value, target: &[usize]) -> Option<Value> {
    let len = target
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&len| len <= MAX_EXPANDED)?;
    match input.data.len() {
        1 => Some(Value {
            shape: target.to_vec(),
            data: vec![input.data[0]; len],
        }),
        n if n == len => Some(Value {
            shape: target.to_vec(),
            data: input.data,
        }),
        _ => None,
    }
}

fn static_shape(ty: &ArgType) -> Option<Vec<usize>> {
    match ty {
        ArgType::Tensor(t) => t.static_shape_known(),
        _ => None,
    }
}

/// What the weights cannot show (stride, padding, dilation), where it differs from torchvision.
fn conv_mismatch(
    conv: &onnx_ir::conv2d::Conv2dNode,
    kernel: [usize; 2],
    stride: usize,
    padding: usize,
) -> Option<String> {
    let c = &conv.config;
    let pads_ok = match c.padding {
        onnx_ir::padding::PaddingConfig2d::Valid => padding == 0,
        onnx_ir::padding::PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r] == [padding; 4],
    };
    let ok = c.kernel_size == kernel
        && c.stride == [stride, stride]
        && (stride == 1 || stride == 2)
        && c.dilation == [1, 1]
        && pads_ok
        && matches!(c.auto_pad, onnx_ir::padding::AutoPad::NotSet);
    (!ok).then(|| {
        format!(
            "convolution {} has kernel {:?}, stride {:?}, padding {}, dilation {:?}; torchvision's has kernel {kernel:?}, padding {padding}",
            conv.name, c.kernel_size, c.stride, c.padding, c.dilation
        )
    })
}

/// The name of a node's first output; `""` (read by nothing) when it has none.
fn out(args: &[Argument]) -> &str {
    args.first().map_or("", |a| a.name.as_str())
}

/// Input `i` of a node.
fn input<'a>(args: &'a [Argument], i: usize, owner: &str) -> Result<&'a Argument> {
    args.get(i)
        .ok_or_else(|| unsupported(format!("{owner}: a node without input {i}")))
}

fn describe(node: &Node) -> String {
    format!("{} ({:?})", node.name(), node.node_type())
}

fn not_a_resnet(what: String) -> Error {
    Error::Unsupported {
        what: format!("not a ResNet: {what}"),
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported { what: what.into() }
}
