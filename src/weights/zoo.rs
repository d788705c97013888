//! [`Zoo`]: which model zoo a checkpoint comes from.

use std::fmt;

/// The model zoo a checkpoint was recognised as, from its names, shapes and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Zoo {
    /// A 2-D ImageNet ResNet (torchvision, timm, or an ONNX export), inflated.
    ImageNet,
    /// A 3-D checkpoint in torchvision-3-D naming (as ACSConv, timm_3d, I3ResNet-style code
    /// and this crate save them).
    Torchvision3d,
    /// torchvision's video ResNets (`r3d_18`, `mc3_18`, `r2plus1d_18`; Kinetics-400),
    /// recognised by their names (`stem.0`, `layer1.0.conv1.0`).
    TorchvisionVideo,
    /// MedicalNet (Tencent's Med3D): one input channel, no `fc`; told apart by its
    /// segmentation head `conv_seg`, by parameter-free shortcuts (depths 18 and 34), or by a
    /// configuration with MedicalNet's stages ([`ResNet3dConfig::medicalnet`](crate::ResNet3dConfig::medicalnet)). A file of
    /// depth 10 or 50 and more without `conv_seg` has the tensors of a one-channel, headless
    /// torchvision-3-D ResNet: load it with `medicalnet(depth)`.
    MedicalNet,
}

impl fmt::Display for Zoo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Zoo::ImageNet => "a 2-D ImageNet ResNet",
            Zoo::Torchvision3d => "a torchvision-3-D ResNet",
            Zoo::MedicalNet => "MedicalNet",
            Zoo::TorchvisionVideo => "a torchvision video ResNet",
        })
    }
}
