//! A few fine-tuning steps of the finetune example: the loss falls.

use resnet3d::burn::optim::AdamConfig;
use resnet3d::burn::tensor::Device;

use crate::common::fixtures;

#[path = "../../examples/finetune.rs"]
#[allow(dead_code)]
mod example;

#[test]
fn fine_tuning_lowers_the_loss() {
    let device = Device::flex().autodiff();
    let mut model = example::inflated_resnet18(&fixtures().join("checkpoints/r18_w4.pth"), &device).unwrap();
    model = example::freeze_early(model);
    let mut optimizer = AdamConfig::new().init();
    let (x, y) = example::batch(0, 8, &device);
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss;
        (model, loss) = example::train_step(model, &mut optimizer, x.clone(), y.clone(), 3e-3);
        losses.push(loss);
    }
    println!("losses: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[7] < 0.7 * losses[0], "the loss did not fall: {losses:?}");
}

#[test]
fn samples_are_labelled_spheres_and_cubes() {
    let (sphere, label0) = example::sample(10);
    let (cube, label1) = example::sample(11);
    assert_eq!((label0, label1), (0, 1));
    assert_eq!(sphere.len(), example::SIZE.pow(3));
    // Both hold a bright object: the mean is well above the noise's mean of 0.
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(mean(&sphere) > 0.01 && mean(&cube) > 0.01);
}
