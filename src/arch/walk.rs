//! The one walk over a [`Plan`]: stem, max pool, every block (main chain, shortcut, the
//! shortcut added before the last ReLU), with taps after the stem and after each stage. Two
//! engines run it: the Burn model's (tensors, one Burn operation per layer) and the frozen
//! network's (channels-last buffers, packed kernels); what a layer computes is the engine's,
//! in which order and with which inputs is the walk's.

use crate::arch::geometry::{PoolGeometry, ZeroPadShortcut};
use crate::arch::plan::{BlockPlan, Plan, PlanLayer, ShortcutPlan, Site};
use crate::error::{Error, Result};

/// What runs a plan's layers on its activations.
pub(crate) trait Engine {
    /// What the plan holds per layer for this engine.
    type Layer: PlanLayer;
    /// An activation.
    type Act;

    /// `layer` on `x` (its convolution, BatchNorm and what follows it), with `residual` added
    /// before the ReLU where the layer ends a block.
    fn layer(&self, layer: &Self::Layer, x: &Self::Act, residual: Option<&Self::Act>) -> Result<Self::Act>;

    /// [`layer`](Self::layer) with `residual` added, which the walk gives up: the engine may
    /// write the output over it.
    fn layer_onto(&self, layer: &Self::Layer, x: &Self::Act, residual: Self::Act) -> Result<Self::Act> {
        let out = self.layer(layer, x, Some(&residual));
        self.release(residual);
        out
    }

    /// The max pool on `x`.
    fn max_pool(&self, pool: &PoolGeometry, x: Self::Act) -> Result<Self::Act>;

    /// MedicalNet's zero-padded shortcut of `x`, for the block at `site`.
    fn zero_pad(&self, shortcut: &ZeroPadShortcut, x: &Self::Act, site: Site) -> Result<Self::Act>;

    /// An activation the walk no longer needs (the frozen engine keeps its buffer for reuse).
    fn release(&self, _x: Self::Act) {}

    /// A block's input `x` as two activations, one for the main chain and one for the
    /// shortcut, where the engine has a cheaper sum of their gradients than of one input read
    /// twice; `None` (both read `x`) elsewhere.
    fn branches(&self, _x: &Self::Act) -> Option<(Self::Act, Self::Act)> {
        None
    }
}

/// Where the walk hands the activation to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tap {
    /// After the stem, before the max pool.
    Stem,
    /// After stage `i` (0 for `layer1`).
    Stage(usize),
}

/// The plan on `x` up to `layer4`'s output. `tap` sees the activation at each [`Tap`] and
/// returns what the walk goes on with (the same activation, a copy kept elsewhere, or a
/// replacement such as a leaf of the autodiff graph).
///
/// # Errors
/// The engine's errors, and `tap`'s.
pub(crate) fn run<E: Engine>(
    plan: &Plan<E::Layer>,
    engine: &E,
    x: E::Act,
    mut tap: impl FnMut(Tap, E::Act) -> Result<E::Act>,
) -> Result<E::Act> {
    let mut x = x;
    for layer in &plan.stem {
        let y = engine.layer(layer, &x, None)?;
        engine.release(std::mem::replace(&mut x, y));
    }
    x = tap(Tap::Stem, x)?;
    if let Some(pool) = &plan.max_pool {
        x = engine.max_pool(pool, x)?;
    }
    for (s, stage) in plan.stages.iter().enumerate() {
        for b in stage {
            x = block(engine, b, x)?;
        }
        x = tap(Tap::Stage(s), x)?;
    }
    Ok(x)
}

/// One residual block on `x`: the main chain, the shortcut of `x`, and the chain's last layer
/// with the shortcut added before its ReLU. `x` is released once the shortcut has read it.
///
/// # Errors
/// The engine's errors; [`Error::InvalidNetwork`] for a block without layers.
pub(crate) fn block<E: Engine>(engine: &E, block: &BlockPlan<E::Layer>, x: E::Act) -> Result<E::Act> {
    let Some((last, chain)) = block.main.split_last() else {
        return Err(Error::InvalidNetwork {
            layer: block.site.to_string(),
            what: "a block without convolutions".into(),
        });
    };
    // The engine's two branches of `x`, where it has them: the main chain reads the first,
    // the shortcut the second.
    let (x, short) = match engine.branches(&x) {
        Some((main, short)) => {
            engine.release(x);
            (main, Some(short))
        }
        None => (x, None),
    };
    let mut y: Option<E::Act> = None;
    for layer in chain {
        let next = engine.layer(layer, y.as_ref().unwrap_or(&x), None)?;
        if let Some(previous) = y.replace(next) {
            engine.release(previous);
        }
    }
    let input = short.as_ref().unwrap_or(&x);
    let shortcut = match &block.shortcut {
        ShortcutPlan::Identity => None,
        ShortcutPlan::Projection(layer) => Some(engine.layer(layer, input, None)?),
        ShortcutPlan::ZeroPad(zp) => Some(engine.zero_pad(zp, input, block.site)?),
    };
    // The identity shortcut is the engine's branch itself, where it made one.
    let shortcut = match shortcut {
        Some(s) => {
            short.into_iter().for_each(|b| engine.release(b));
            Some(s)
        }
        None => short,
    };
    // The skip connection: added before the last ReLU. `x` is released as soon as neither
    // the last layer's input nor the residual is `x`.
    let out = match (y, shortcut) {
        (Some(y), Some(shortcut)) => {
            engine.release(x);
            let out = engine.layer_onto(last, &y, shortcut);
            engine.release(y);
            out?
        }
        (Some(y), None) => {
            let out = engine.layer_onto(last, &y, x);
            engine.release(y);
            out?
        }
        (None, shortcut) => {
            let out = engine.layer(last, &x, Some(shortcut.as_ref().unwrap_or(&x)));
            shortcut.into_iter().for_each(|s| engine.release(s));
            engine.release(x);
            out?
        }
    };
    Ok(out)
}
