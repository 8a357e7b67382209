"""Write synthetic datasets in the real layouts (visionssm.mm.synthetic): COCO instances and ADE20K of drawn shapes,
and an ImageNet-1k image folder of JPEGs.

    python tools/make_synthetic_data.py data/synthetic [--tasks det seg cls] [--num-train 8] [--num-val 4]
        [--size 128 128] [--num-classes 1000] [--train-per-class 3] [--val-per-class 1] [--workers N] [--seed 0]

Prints, per task, the --cfg-options that point a COCO / ADE20K / ImageNet classification config at the generated set.
"""
import argparse

from visionssm.mm.synthetic import dataset_cfg_options, make_synthetic_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out_dir', help='where to write coco/, ade/ and imagenet/')
    parser.add_argument('--tasks', nargs='+', choices=('det', 'seg', 'cls'), default=('det', 'seg'),
                        help='det: COCO instances, seg: ADE20K, cls: ImageNet folder (default: det seg)')
    parser.add_argument('--num-train', type=int, default=8, help='det / seg training images')
    parser.add_argument('--num-val', type=int, default=4, help='det / seg validation images')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('HEIGHT', 'WIDTH'),
                        help='det / seg image size')
    parser.add_argument('--num-classes', type=int, default=1000, help='cls: the first N ImageNet-1k classes')
    parser.add_argument('--train-per-class', type=int, default=3, help='cls: training images per class')
    parser.add_argument('--val-per-class', type=int, default=1, help='cls: validation images per class')
    parser.add_argument('--workers', type=int, default=None, help='cls: writing processes (default: one per CPU)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    roots = make_synthetic_data(args.out_dir, args.num_train, args.num_val, args.size, args.seed, tasks=args.tasks,
                                num_classes=args.num_classes, train_per_class=args.train_per_class,
                                val_per_class=args.val_per_class, workers=args.workers)
    for task, root in roots.items():
        options = ' '.join(f'{k}={v}' for k, v in dataset_cfg_options(task, root).items())
        print(f'{task}: {root}\n  --cfg-options {options}')


if __name__ == '__main__':
    main()
