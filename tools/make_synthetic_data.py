"""Write the small synthetic COCO-instance and ADE20K-layout sets of drawn shapes (visionssm.mm.synthetic).

    python tools/make_synthetic_data.py data/synthetic [--num-train 8] [--num-val 4] [--size 128 128] [--seed 0]

Prints, per task, the --cfg-options that point a COCO / ADE20K config at the generated set.
"""
import argparse

from visionssm.mm.synthetic import dataset_cfg_options, make_synthetic_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out_dir', help='where to write coco/ and ade/')
    parser.add_argument('--num-train', type=int, default=8)
    parser.add_argument('--num-val', type=int, default=4)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    roots = make_synthetic_data(args.out_dir, args.num_train, args.num_val, args.size, args.seed)
    for task, root in roots.items():
        options = ' '.join(f'{k}={v}' for k, v in dataset_cfg_options(task, root).items())
        print(f'{task}: {root}\n  --cfg-options {options}')


if __name__ == '__main__':
    main()
